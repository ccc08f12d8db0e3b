"""Threads: rnnfast is safe to call from several Python threads at once, and across
torch.set_num_threads changes.

* Python threads running forward + backward concurrently, each on its own module, or
  all on one shared module, get bitwise the results of the same calls run one after
  another (same intra-op thread count).
* Concurrent .backward() calls on one shared module accumulate every contribution
  into .grad (the sum of the per-call gradients, up to the order of the additions).
* torch.set_num_threads changes between calls, or from another thread while calls
  are running, are safe. What the thread count may change is pinned down in
  test_determinism.py::test_what_varies_with_the_thread_count: float32 (AVX-512
  kernels) output, h_n, input / hx / bias gradients are bitwise independent of it,
  the weight gradients (MKL GEMMs) and everything in float64 (MKL) vary in the last
  bits only.

The cases run rnnfast.RNN, rnnfast.LSTM (with and without projections) and rnnfast.GRU.
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
from helpers import OWN_FLOAT32_GEMMS


@pytest.fixture(autouse=True)
def _restore_num_threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


# (hidden, layers, bidirectional, packed, dtype). 12 x 64 x 64 per step is above the
# size at which a unidirectional float32 layer splits its columns over an OpenMP team;
# bidirectional layers run one direction per thread.
CASES = [
    dict(I=8, H=64, N=12, T=6, layers=1, bidirectional=False, packed=False, dtype=torch.float32),
    dict(I=5, H=17, N=3, T=7, layers=2, bidirectional=True, packed=True, dtype=torch.float32),
    dict(I=6, H=9, N=4, T=5, layers=2, bidirectional=True, packed=False, dtype=torch.float64),
    dict(I=4, H=16, N=2, T=4, layers=2, bidirectional=False, packed=True, dtype=torch.bfloat16),
]
GATED_CASES = [
    dict(cell="lstm", I=8, H=32, N=12, T=6, layers=1, bidirectional=False, packed=False,
         dtype=torch.float32),
    dict(cell="lstm", proj_size=6, I=5, H=17, N=3, T=7, layers=2, bidirectional=True,
         packed=True, dtype=torch.float32),
    dict(cell="gru", I=8, H=40, N=12, T=6, layers=1, bidirectional=False, packed=False,
         dtype=torch.float32),
    dict(cell="gru", I=6, H=9, N=4, T=5, layers=2, bidirectional=True, packed=True,
         dtype=torch.float64),
]
GATED_IDS = ["lstm-f32", "lstm-proj-f32-bidir-packed", "gru-f32", "gru-f64-bidir-packed"]


def _states(h):
    """[h] for a state tensor, [h, c] for LSTM's (h, c)."""
    return list(h) if isinstance(h, tuple) else [h]


class Job:
    """One module + fixed random inputs; run() is forward + autograd.grad, no side effects."""

    def __init__(self, case, seed, module=None):
        self.case = case
        g = torch.Generator().manual_seed(seed)
        cell = case.get("cell", "rnn")
        if module is None:
            cls = {"rnn": rnnfast.RNN, "lstm": rnnfast.LSTM, "gru": rnnfast.GRU}[cell]
            kwargs = dict(proj_size=case.get("proj_size", 0)) if cell == "lstm" else {}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                module = cls(case["I"], case["H"], case["layers"],
                             bidirectional=case["bidirectional"], dtype=case["dtype"], **kwargs)
        self.module = module
        D = 2 if case["bidirectional"] else 1
        dt = case["dtype"]
        P = case.get("proj_size", 0) or case["H"]
        self.x = torch.randn(case["T"], case["N"], case["I"], generator=g).to(dt).requires_grad_()
        self.hx = torch.randn(case["layers"] * D, case["N"], P, generator=g).to(dt)
        self.hx.requires_grad_()
        if cell == "lstm":  # (h0, c0)
            c0 = torch.randn(case["layers"] * D, case["N"], case["H"], generator=g).to(dt)
            self.hx = (self.hx, c0.requires_grad_())
        self.lengths = torch.randint(1, case["T"] + 1, (case["N"],), generator=g)
        self.lengths[0] = case["T"]
        rows = int(self.lengths.sum()) if case["packed"] else case["T"] * case["N"]
        self.go = torch.randn(rows * D * P, generator=g).to(dt)
        self.gh = [torch.randn(h.shape, generator=g).to(dt) for h in _states(self.hx)]

    def inputs(self):
        if self.case["packed"]:
            return pack_padded_sequence(self.x, self.lengths, enforce_sorted=False)
        return self.x

    def run(self):
        out, h_n = self.module(self.inputs(), self.hx)
        out = out.data if self.case["packed"] else out
        results = [out, *_states(h_n)]
        grads = torch.autograd.grad(results,
                                    [self.x, *_states(self.hx), *self.module.parameters()],
                                    [self.go.view(out.shape), *self.gh])
        return [r.detach() for r in results] + list(grads)

    def names(self):
        """What run() returns, by name."""
        lstm = self.module.mode == "LSTM"
        return (["output", "h_n"] + (["c_n"] if lstm else []) + ["grad input", "grad hx"]
                + (["grad cx"] if lstm else [])
                + [f"grad {n}" for n, _ in self.module.named_parameters()])


def _run_threads(target, args_list):
    errors = []

    def wrapped(*args):
        try:
            target(*args)
        except BaseException as e:  # noqa: BLE001 - reported in the main thread
            errors.append(e)

    threads = [threading.Thread(target=wrapped, args=args) for args in args_list]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def _assert_bitwise(results, expected, what):
    for i, (a, e) in enumerate(zip(results, expected)):
        assert torch.equal(a, e), f"{what}: result {i} differs from the sequential run"


@pytest.mark.parametrize("num_threads", [1, 2])
def test_threads_on_separate_modules_match_sequential_runs(num_threads):
    torch.set_num_threads(num_threads)
    jobs = [Job(case, seed) for seed, case in enumerate((CASES + GATED_CASES) * 2)]
    expected = [job.run() for job in jobs]
    results = {}

    def work(i):
        results[i] = [jobs[i].run() for _ in range(3)]

    _run_threads(work, [(i,) for i in range(len(jobs))])
    for i, runs in results.items():
        for r in runs:
            _assert_bitwise(r, expected[i], f"job {i} ({jobs[i].case})")


@pytest.mark.parametrize("case", [CASES[0], CASES[2], GATED_CASES[0], GATED_CASES[1]],
                         ids=["float32-team", "float64-bidir", "lstm-float32",
                              "lstm-proj-float32-bidir-packed"])
def test_threads_on_one_shared_module_match_sequential_runs(case):
    shared = Job(case, seed=0).module
    jobs = [Job(case, seed=s, module=shared) for s in range(4)]  # own inputs each
    expected = [job.run() for job in jobs]
    results = {}

    def work(i):
        results[i] = [jobs[i].run() for _ in range(3)]

    _run_threads(work, [(i,) for i in range(len(jobs))])
    for i, runs in results.items():
        for r in runs:
            _assert_bitwise(r, expected[i], f"thread {i} on the shared module")


@pytest.mark.parametrize("case", [CASES[1], GATED_CASES[1]], ids=["rnn", "lstm-proj"])
def test_concurrent_backward_on_a_shared_module_accumulates_every_call(case):
    case = dict(case, dtype=torch.float64)
    shared = Job(case, seed=0).module
    jobs = [Job(case, seed=s, module=shared) for s in range(4)]
    n_params = len(list(shared.parameters()))
    per_job = [job.run()[-n_params:] for job in jobs]  # parameter gradients of each call
    expected = [sum(g[i] for g in per_job) for i in range(n_params)]

    def work(i):
        job = jobs[i]
        out, h_n = job.module(job.inputs(), job.hx)
        out = out.data
        torch.autograd.backward([out, *_states(h_n)], [job.go.view(out.shape), *job.gh])

    shared.zero_grad(set_to_none=True)
    _run_threads(work, [(i,) for i in range(len(jobs))])
    for p, e in zip(shared.parameters(), expected):
        torch.testing.assert_close(p.grad, e, atol=1e-12, rtol=1e-12)


def _float32_thread_invariant(result, names):
    """output, h_n (c_n), the gradients of input and hx (cx), and the bias gradients:
    everything but the weight gradients, the results the float32 kernels keep bitwise
    independent of the thread count (where their GEMMs are rnnfast's own: AVX-512)."""
    if not OWN_FLOAT32_GEMMS:
        return []
    return [r for r, n in zip(result, names, strict=True) if "weight" not in n]


@pytest.mark.parametrize("case", CASES + GATED_CASES,
                         ids=["f32-team", "f32-bidir-packed", "f64", "bf16"] + GATED_IDS)
def test_set_num_threads_between_calls(case):
    torch.set_num_threads(1)
    job = Job(case, seed=3)
    expected = job.run()
    for n in [2, 1, 3, 2, 1, 4, 2]:
        torch.set_num_threads(n)
        result = job.run()
        for a, e in zip(result, expected):
            scale = max(1.0, e.abs().max().item())
            tol = 1e-12 if case["dtype"] == torch.float64 else 1e-5
            if case["dtype"] == torch.bfloat16:
                tol = 1e-2  # a last-bit float32 difference can flip a bfloat16 rounding
            assert (a - e).abs().max().item() <= tol * scale, f"{n} threads"
        if case["dtype"] == torch.float32:
            names = job.names()
            _assert_bitwise(_float32_thread_invariant(result, names),
                            _float32_thread_invariant(expected, names), f"float32 with {n} threads")


@pytest.mark.parametrize("case", [CASES[0], GATED_CASES[0], GATED_CASES[2]],
                         ids=["rnn", "lstm", "gru"])
def test_set_num_threads_from_another_thread_while_running(case):
    torch.set_num_threads(2)
    job = Job(case, seed=5)
    expected = job.run()
    stop = threading.Event()

    def toggle():
        n = 0
        while not stop.is_set():
            torch.set_num_threads(1 + n % 3)
            n += 1

    toggler = threading.Thread(target=toggle)
    toggler.start()
    try:
        results = [job.run() for _ in range(15)]
    finally:
        stop.set()
        toggler.join(timeout=60)
    for result in results:
        for a, e in zip(result, expected):
            assert (a - e).abs().max().item() <= 1e-5 * max(1.0, e.abs().max().item())
        _assert_bitwise(_float32_thread_invariant(result, job.names()),
                        _float32_thread_invariant(expected, job.names()),
                        "float32 while the thread count changes")
