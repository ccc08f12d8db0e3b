"""CUDA-specific tests of the rnnfast kernels (skipped without a GPU).

Oracles: the float64 CPU reference (rnnfast.reference) and cuDNN's nn.RNN / nn.LSTM /
nn.GRU with TF32 off. The Elman parity tests run both recurrence paths
(RNNFAST_PERSISTENT=0/1); the persistent kernels have their own file,
test_cuda_persistent.py. Also: bitwise determinism, eval-mode backward, gradients
through only h_n or only the output, the current (non-default) stream, a second GPU,
CUDA graphs, and float16 / bfloat16 tolerances. The LSTM (with and without proj_size)
and GRU section at the end covers the gated cells' per-step path the same way, plus
NaN-poisoned memory and a T = 100,000 LSTM. The device-independent semantics are
covered by the `device`-parametrized tests in the other files.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
from helpers import call_reference_forward, call_rnn_forward
from rnnfast import reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ops = torch.ops.rnnfast


@pytest.fixture
def no_tf32():
    """float32 matmuls and cuDNN in full float32 (the oracle comparisons need it)."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# ---------------------------------------------------------------------------
# Cases: float64 CPU tensors, cast per test
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    x: torch.Tensor
    hx: torch.Tensor
    weights: list
    batch_sizes: torch.Tensor | None
    masks: torch.Tensor | None
    grad_out: torch.Tensor
    grad_hn: torch.Tensor
    has_biases: bool
    num_layers: int
    nonlinearity: str
    bidirectional: bool


def _sequence_input(g, T, N, I, lengths, out_width):
    """Float64 input of a case: dense (T, N, I), or with `lengths` the packed data of an
    unsorted batch. Returns x, batch_sizes, N, the output's shape and its row count."""
    if lengths is None:
        x = torch.randn(T, N, I, generator=g, dtype=torch.float64)
        return x, None, N, (T, N, out_width), T * N
    N, T = len(lengths), max(lengths)
    padded = torch.randn(T, N, I, generator=g, dtype=torch.float64)
    packed = pack_padded_sequence(padded, torch.tensor(lengths), enforce_sorted=False)
    rows = packed.data.shape[0]
    return packed.data, packed.batch_sizes, N, (rows, out_width), rows


def _dropout_masks(g, dropout, num_layers, rows, width):
    """Inter-layer dropout masks (scaled keep masks), or None."""
    if not (dropout and num_layers > 1):
        return None
    keep = torch.rand(num_layers - 1, rows, width, generator=g, dtype=torch.float64) > dropout
    return keep.double() / (1 - dropout)


def make_case(num_layers=1, bidirectional=False, nonlinearity="tanh", bias=True, lengths=None,
              dropout=0.0, T=7, N=5, I=6, H=33, seed=0) -> Case:
    g = torch.Generator().manual_seed(seed)
    D = 2 if bidirectional else 1
    k = H**-0.5

    def uniform(*shape):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * k

    weights = []
    for layer in range(num_layers):
        I_l = I if layer == 0 else D * H
        for _ in range(D):
            weights += [uniform(H, I_l), uniform(H, H)]
            if bias:
                weights += [uniform(H), uniform(H)]
    x, batch_sizes, N, out_shape, rows = _sequence_input(g, T, N, I, lengths, D * H)
    hx = torch.randn(num_layers * D, N, H, generator=g, dtype=torch.float64) * 0.5
    masks = _dropout_masks(g, dropout, num_layers, rows, D * H)
    return Case(
        x, hx, weights, batch_sizes, masks,
        torch.randn(*out_shape, generator=g, dtype=torch.float64),
        torch.randn(num_layers * D, N, H, generator=g, dtype=torch.float64),
        bias, num_layers, nonlinearity, bidirectional,
    )


def run(case: Case, device, dtype, *, use_reference=False, use_out=True, use_hn=True):
    """Forward + backward; returns [output, h_n, grad_x, grad_hx, *grad_weights]."""

    def cast(t):
        return None if t is None else t.to(device=device, dtype=dtype)

    x = cast(case.x).requires_grad_()
    hx = cast(case.hx).requires_grad_()
    ws = [cast(w).requires_grad_() for w in case.weights]
    args = (x, hx, ws, case.batch_sizes, cast(case.masks), case.has_biases, case.num_layers,
            case.nonlinearity, case.bidirectional)
    if use_reference:
        out, hn = call_reference_forward(*args)
    else:
        out, hn, _ = call_rnn_forward(*args)
    outputs, grads = [], []
    if use_out:
        outputs.append(out)
        grads.append(cast(case.grad_out))
    if use_hn:
        outputs.append(hn)
        grads.append(cast(case.grad_hn))
    g = torch.autograd.grad(outputs, [x, hx, *ws], grads, allow_unused=True)
    g = [torch.zeros_like(t) if gi is None else gi for gi, t in zip(g, [x, hx, *ws])]
    return [out.detach(), hn.detach(), *g]


def names(case: Case):
    return ["output", "h_n", "grad_input", "grad_hx"] + [
        f"grad_weights[{i}]" for i in range(len(case.weights))
    ]


def assert_all_close(actual, expected, case, *, atol, rtol):
    for a, e, n in zip(actual, expected, names(case)):
        torch.testing.assert_close(a.double().cpu(), e.double().cpu(), atol=atol, rtol=rtol,
                                   msg=lambda m, n=n: f"{n}: {m}")


def assert_low_precision_close(actual, expected, result_names, n_fwd, fwd_tol, grad_tol):
    """16-bit dtypes: the first n_fwd results (output and the final states) within
    fwd_tol * max(1, max |e|) elementwise; the gradients within grad_tol in relative
    Frobenius norm (ReLU's derivative jumps, so 16-bit rounding of a pre-activation near 0
    legitimately flips a few entries)."""
    for i, (a, e, n) in enumerate(zip(actual, expected, result_names)):
        a, e = a.double().cpu(), e.double().cpu()
        assert torch.isfinite(a).all(), f"{n}: non-finite values"
        if e.numel() == 0:
            assert a.numel() == 0, f"{n}: {a.numel()} values where none were expected"
            continue
        if i < n_fwd:
            err, tol = (a - e).abs().max().item(), fwd_tol * max(1.0, e.abs().max().item())
        else:
            err, tol = (a - e).norm().item(), grad_tol * max(1e-12, e.norm().item())
        assert err <= tol, f"{n}: error {err:.3g} > {tol:.3g}"


def round_case(case, dtype):
    """The case (Case or GatedCase) with every floating-point tensor, in lists too,
    rounded to dtype (kept in float64)."""

    def r(t):
        return t.to(dtype).double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    fields = {f.name: getattr(case, f.name) for f in dataclasses.fields(case)}
    for name, value in fields.items():
        fields[name] = [r(t) for t in value] if isinstance(value, list) else r(value)
    return type(case)(**fields)


CASES = {
    "uni-tanh-dense": dict(),
    "bi-relu-nobias-2layers-dropout": dict(num_layers=2, bidirectional=True,
                                           nonlinearity="relu", bias=False, dropout=0.4),
    "bi-tanh-3layers-packed-dropout": dict(num_layers=3, bidirectional=True,
                                           lengths=[7, 3, 5, 5, 1, 2], dropout=0.3),
    "uni-relu-2layers-packed": dict(num_layers=2, nonlinearity="relu", lengths=[4, 6, 1, 6]),
    "bi-tanh-packed-equal": dict(bidirectional=True, lengths=[3, 3, 3]),
    "bi-tanh-wide": dict(bidirectional=True, T=4, N=9, I=40, H=70),
}


def test_build_has_cuda():
    assert rnnfast.build_info()["with_cuda"], (
        "rnnfast was built without CUDA on a machine with a GPU; rebuild with "
        "RNNFAST_CUDA=1 python setup.py build_ext --inplace"
    )


# ---------------------------------------------------------------------------
# Parity with the float64 reference and with cuDNN
# ---------------------------------------------------------------------------


# RNNFAST_PERSISTENT values: the per-step path and the persistent kernels (these
# small batches take the persistent path by default; float64 never does).
PATHS = [pytest.param("0", id="per-step"), pytest.param("1", id="persistent")]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_float64_reference(name, dtype, path, monkeypatch, no_tf32):
    monkeypatch.setenv("RNNFAST_PERSISTENT", path)
    case = make_case(**CASES[name])
    expected = run(case, "cpu", torch.float64, use_reference=True)
    actual = run(case, "cuda", dtype)
    if dtype == torch.float64:
        assert_all_close(actual, expected, case, atol=1e-10, rtol=1e-9)
    else:
        # TF32 would be off by ~1e-3 here: this also checks the allow_tf32 flag is honoured.
        assert_all_close(actual, expected, case, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize(
    "dtype,fwd_tol,grad_tol", [(torch.float16, 5e-3, 1e-2), (torch.bfloat16, 3e-2, 1e-1)]
)
@pytest.mark.parametrize("path", PATHS)
def test_half_precision(name, dtype, fwd_tol, grad_tol, path, monkeypatch):
    monkeypatch.setenv("RNNFAST_PERSISTENT", path)
    # Reference: float64 on the same 16-bit-rounded inputs, so only the kernels' error counts.
    case = make_case(**CASES[name])
    rounded = round_case(case, dtype)
    expected = run(rounded, "cpu", torch.float64, use_reference=True)
    actual = run(case, "cuda", dtype)
    for t in actual:
        assert t.dtype == dtype
    assert_low_precision_close(actual, expected, names(case), 2, fwd_tol, grad_tol)


@pytest.mark.parametrize(
    "num_layers,bidirectional,nonlinearity,bias,packed",
    [
        (1, False, "tanh", True, False),
        (2, True, "relu", True, False),
        (3, True, "tanh", False, True),
        (2, False, "tanh", True, True),
    ],
)
def test_matches_cudnn(num_layers, bidirectional, nonlinearity, bias, packed, no_tf32):
    torch.manual_seed(0)
    T, N, I, H = 9, 6, 10, 48
    kw = dict(num_layers=num_layers, nonlinearity=nonlinearity, bias=bias,
              bidirectional=bidirectional)
    cudnn = torch.nn.RNN(I, H, **kw).cuda()
    ours = rnnfast.RNN(I, H, **kw).cuda()
    ours.load_state_dict(cudnn.state_dict())
    D = 2 if bidirectional else 1
    x = torch.randn(T, N, I, device="cuda")
    h0 = torch.randn(num_layers * D, N, H, device="cuda")
    lengths = torch.tensor([9, 2, 5, 9, 1, 7])
    results = []
    for model in (cudnn, ours):
        xi = x.clone().requires_grad_()
        hi = h0.clone().requires_grad_()
        inp = pack_padded_sequence(xi, lengths, enforce_sorted=False) if packed else xi
        out, hn = model(inp, hi)
        out_data = out.data if packed else out
        gen = torch.Generator(device="cuda").manual_seed(1)
        go = torch.randn(out_data.shape, device="cuda", generator=gen)
        gh = torch.randn(hn.shape, device="cuda", generator=gen)
        model.zero_grad()
        torch.autograd.backward([out_data, hn], [go, gh])
        results.append([out_data.detach(), hn.detach(), xi.grad, hi.grad]
                       + [p.grad for p in model.parameters()])
    for i, (a, e) in enumerate(zip(results[1], results[0])):
        torch.testing.assert_close(a, e, atol=2e-5, rtol=1e-4, msg=lambda m, i=i: f"[{i}] {m}")


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cell_matches_reference(nonlinearity, bias, dtype, no_tf32):
    g = torch.Generator().manual_seed(3)
    N, I, H = 7, 12, 37
    tensors = [torch.randn(N, I, generator=g), torch.randn(N, H, generator=g),
               torch.randn(H, I, generator=g) * 0.2, torch.randn(H, H, generator=g) * 0.2]
    if bias:
        tensors += [torch.randn(H, generator=g) * 0.2, torch.randn(H, generator=g) * 0.2]
    grad_h = torch.randn(N, H, generator=g)

    def go(device, dt, fn, ts, gh):
        ts = [t.to(device=device, dtype=dt).requires_grad_() for t in ts]
        b = (ts[4], ts[5]) if bias else (None, None)
        h = fn(ts[0], ts[1], ts[2], ts[3], *b, nonlinearity)
        grads = torch.autograd.grad(h, ts, gh.to(device=device, dtype=dt))
        return [h.detach(), *grads]

    # Reference: float64 on the inputs rounded to dtype, so only the kernels' error counts.
    expected = go("cpu", torch.float64, reference.rnn_cell_forward,
                  [t.to(dtype) for t in tensors], grad_h.to(dtype))
    actual = go("cuda", dtype, ops.rnn_cell_forward, tensors, grad_h)
    fwd_tol, grad_tol = {torch.float32: (2e-5, 2e-5), torch.float16: (5e-3, 1e-2),
                         torch.bfloat16: (3e-2, 1e-1)}[dtype]
    for i, (a, e) in enumerate(zip(actual, expected)):
        a, e = a.double().cpu(), e.double().cpu()
        if i == 0:
            err, tol = (a - e).abs().max().item(), fwd_tol * max(1.0, e.abs().max().item())
        else:
            err, tol = (a - e).norm().item(), grad_tol * e.norm().item()
        assert err <= tol, f"[{i}] error {err:.3g} > {tol:.3g}"


def test_gradcheck_float64():
    case = make_case(num_layers=2, bidirectional=True, lengths=[3, 1, 2], dropout=0.5, I=3, H=4)
    cuda = {"device": "cuda", "dtype": torch.float64}
    x = case.x.to(**cuda).requires_grad_()
    hx = case.hx.to(**cuda).requires_grad_()
    ws = [w.to(**cuda).requires_grad_() for w in case.weights]
    masks = case.masks.to(**cuda)

    def fn(x, hx, *ws):
        out, hn, _ = call_rnn_forward(x, hx, list(ws), case.batch_sizes, masks, True, 2, "tanh",
                                      True)
        return out, hn

    assert torch.autograd.gradcheck(fn, (x, hx, *ws))


# ---------------------------------------------------------------------------
# Determinism, autograd corner cases
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_deterministic(dtype):
    case = make_case(num_layers=3, bidirectional=True, lengths=[30, 17, 30, 4, 22, 9, 30, 1],
                     dropout=0.2, I=24, H=96)
    first = run(case, "cuda", dtype)
    for _ in range(3):
        again = run(case, "cuda", dtype)
        for a, b, n in zip(again, first, names(case)):
            assert torch.equal(a, b), f"{n} differs between identical runs"


def test_backward_after_eval_forward(no_tf32):
    torch.manual_seed(0)
    rnn = rnnfast.RNN(5, 16, num_layers=2, dropout=0.5, bidirectional=True).cuda().eval()
    x = torch.randn(6, 3, 5, device="cuda", requires_grad=True)
    out, hn = rnn(x)
    (out.sum() + hn.pow(2).sum()).backward()
    params = list(rnn.parameters())
    # Oracle: the float64 reference with the same weights and no dropout (eval mode).
    x64 = x.detach().double().cpu().requires_grad_()
    w64 = [p.detach().double().cpu().requires_grad_() for p in params]
    h0 = torch.zeros(4, 3, 16, dtype=torch.float64)
    o, h = call_reference_forward(x64, h0, w64, None, None, True, 2, "tanh", True)
    (o.sum() + h.pow(2).sum()).backward()
    torch.testing.assert_close(x.grad.double().cpu(), x64.grad, atol=5e-5, rtol=1e-4)
    for p, r in zip(params, w64):
        torch.testing.assert_close(p.grad.double().cpu(), r.grad, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("which", ["only_output", "only_h_n"])
@pytest.mark.parametrize("name", ["bi-tanh-3layers-packed-dropout", "uni-tanh-dense"])
def test_grads_through_one_output(which, name, no_tf32):
    case = make_case(**CASES[name])
    kw = dict(use_out=which == "only_output", use_hn=which == "only_h_n")
    expected = run(case, "cpu", torch.float64, use_reference=True, **kw)
    actual = run(case, "cuda", torch.float32, **kw)
    assert_all_close(actual, expected, case, atol=5e-5, rtol=1e-4)


def test_empty_batch():
    case = make_case(bidirectional=True, N=0)
    actual = run(case, "cuda", torch.float32)
    assert actual[0].shape == (7, 0, 66) and actual[1].shape == (2, 0, 33)
    for t in actual[4:]:
        assert torch.count_nonzero(t) == 0


def test_many_rows_per_step():
    # More rows than one grid covers (65535 * 8) and more than 1024 column-sum chunks' worth.
    case = make_case(T=2, N=600_000, I=1, H=1)
    expected = run(case, "cpu", torch.float64, use_reference=True)
    actual = run(case, "cuda", torch.float64)
    assert_all_close(actual, expected, case, atol=1e-9, rtol=1e-9)


def test_errors():
    case = make_case()
    x, hx = case.x.cuda(), case.hx.cuda()
    ws = [w.cuda() for w in case.weights]
    with pytest.raises(RuntimeError, match=r"hx\[0\] must be on the device of input"):
        call_rnn_forward(x, hx.cpu(), ws, None, None, True, 1, "tanh", False)
    with pytest.raises(RuntimeError, match="batch_sizes must be a 1-D int64 CPU tensor"):
        call_rnn_forward(x.view(-1, x.shape[-1]), hx, ws, torch.full((7,), 5, device="cuda"),
                         None, True, 1, "tanh", False)
    with pytest.raises(RuntimeError, match="float16, bfloat16, float32 or float64"):
        call_rnn_forward(x.int(), hx, ws, None, None, True, 1, "tanh", False)


# ---------------------------------------------------------------------------
# Streams, devices, CUDA graphs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [False, True])
def test_runs_on_current_stream(bidirectional):
    case = make_case(num_layers=2, bidirectional=bidirectional, T=20, N=16, H=64)
    expected = run(case, "cuda", torch.float32)
    # Everything on the GPU first: a host-to-device copy_ would synchronize.
    src = case.x.float().cuda()
    x = torch.full(case.x.shape, float("nan"), device="cuda")
    hx = case.hx.float().cuda().requires_grad_()
    ws = [w.float().cuda().requires_grad_() for w in case.weights]
    go, gh = case.grad_out.float().cuda(), case.grad_hn.float().cuda()
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        # Keep s busy, then write the real input on s: work launched on any other
        # stream would read the NaNs.
        torch.cuda._sleep(100_000_000)
        x.copy_(src)
        xc = x.requires_grad_()
        out, hn, _ = call_rnn_forward(xc, hx, ws, None, None, True, 2, "tanh", bidirectional)
        grads = torch.autograd.grad([out, hn], [xc, hx, *ws], [go, gh])
        actual = [out.detach().clone(), hn.detach().clone(), *[g.clone() for g in grads]]
    s.synchronize()
    assert_all_close(actual, expected, case, atol=1e-6, rtol=1e-6)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device():
    case = make_case(num_layers=2, bidirectional=True, lengths=[5, 2, 4], dropout=0.3)
    expected = run(case, "cuda:0", torch.float32)
    with torch.cuda.device(0):  # the current device differs from the tensors' device
        actual = run(case, "cuda:1", torch.float32)
    for t in actual:
        assert t.device == torch.device("cuda:1")
    assert_all_close(actual, expected, case, atol=1e-5, rtol=1e-5)


def capture_and_replay(case):
    """Captures a 2-layer bidirectional forward of case in a CUDA graph (after warm-up
    on a side stream), replays it on a new input, and returns the replayed output and
    h_n, the eager results for that input, and the persistent launches the capture made."""
    x = case.x.float().cuda()
    hx = case.hx.float().cuda()
    ws = [w.float().cuda() for w in case.weights]

    def step():
        return call_rnn_forward(x, hx, ws, None, None, True, 2, "tanh", True)[:2]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    before = ops._persistent_launches()
    with torch.cuda.graph(graph):
        static_out, static_hn = step()
    launches = ops._persistent_launches() - before
    new_x = torch.randn_like(x)
    x.copy_(new_x)
    graph.replay()
    torch.cuda.synchronize()
    eager_out, eager_hn = call_rnn_forward(new_x, hx, ws, None, None, True, 2, "tanh", True)[:2]
    return (static_out, static_hn), (eager_out, eager_hn), launches


def test_cuda_graph_capture(no_tf32):
    case = make_case(num_layers=2, bidirectional=True, T=6, N=4, H=32)
    (static_out, static_hn), (eager_out, eager_hn), _ = capture_and_replay(case)
    torch.testing.assert_close(static_out, eager_out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(static_hn, eager_hn, atol=1e-6, rtol=1e-6)


@pytest.mark.slow
def test_compile_reduce_overhead(no_tf32):
    torch.manual_seed(0)
    rnn = rnnfast.RNN(8, 32, num_layers=2, bidirectional=True).cuda()
    x = torch.randn(5, 3, 8, device="cuda")

    def f(x):
        out, hn = rnn(x)
        return out * 2, hn

    compiled = torch.compile(f, fullgraph=True, mode="reduce-overhead")
    with torch.no_grad():
        expected = f(x)
        for _ in range(3):
            actual = compiled(x)
    torch.testing.assert_close(actual[0], expected[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(actual[1], expected[1], atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------
# LSTM (with and without proj_size) and GRU: the gated cells' per-step path
# ---------------------------------------------------------------------------
#
# Cases are float64 CPU tensors (cast per test) for torch.ops.rnnfast.rnn_forward with
# any mode; the oracles are the float64 reference (rnnfast.reference) and cuDNN's
# nn.LSTM / nn.GRU. The gated cells have no persistent kernels: RNNFAST_PERSISTENT=1
# must still take the per-step path (test_gated_never_runs_persistent_kernels).


@dataclasses.dataclass
class GatedCase:
    mode: str
    x: torch.Tensor
    hx: list  # [h0] or [h0, c0]
    weights: list
    batch_sizes: torch.Tensor | None
    masks: torch.Tensor | None
    grad_out: torch.Tensor
    grad_hn: list  # one per state
    has_biases: bool
    num_layers: int
    proj_size: int
    bidirectional: bool


def make_gated_case(mode, num_layers=1, bidirectional=False, bias=True, proj_size=0,
                    lengths=None, dropout=0.0, T=7, N=5, I=6, H=33, seed=0) -> GatedCase:
    g = torch.Generator().manual_seed(seed)
    D = 2 if bidirectional else 1
    G = {"LSTM": 4, "GRU": 3}[mode]
    P = proj_size if proj_size > 0 else H
    k = H**-0.5

    def uniform(*shape):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * k

    weights = []
    for layer in range(num_layers):
        I_l = I if layer == 0 else D * P
        for _ in range(D):
            weights += [uniform(G * H, I_l), uniform(G * H, P)]
            if bias:
                weights += [uniform(G * H), uniform(G * H)]
            if proj_size > 0:
                weights.append(uniform(P, H))
    x, batch_sizes, N, out_shape, rows = _sequence_input(g, T, N, I, lengths, D * P)
    widths = [P, H] if mode == "LSTM" else [H]
    hx = [torch.randn(num_layers * D, N, w, generator=g, dtype=torch.float64) * 0.5
          for w in widths]
    masks = _dropout_masks(g, dropout, num_layers, rows, D * P)
    grad_out = torch.randn(*out_shape, generator=g, dtype=torch.float64)
    grad_hn = [torch.randn(num_layers * D, N, w, generator=g, dtype=torch.float64)
               for w in widths]
    return GatedCase(mode, x, hx, weights, batch_sizes, masks, grad_out, grad_hn, bias,
                     num_layers, proj_size, bidirectional)


def gated_forward(case: GatedCase, x, hx, ws, masks, *, use_reference=False, train=True):
    """(output, h_n list) of the op (or of the float64 reference) on the given tensors."""
    args = (x, hx, ws, case.batch_sizes, masks, case.mode, case.has_biases, case.num_layers,
            case.proj_size, case.bidirectional)
    if use_reference:
        return reference.rnn_forward(*args)
    out, h_n, _ = ops.rnn_forward(*args, train)
    return out, list(h_n)


def run_gated(case: GatedCase, device, dtype, *, use_reference=False, losses=("output", "h_n")):
    """Forward + backward; returns [output, *h_n, grad_x, *grad_hx, *grad_weights].
    losses: which results the loss reads: "output", "h_n" (and c_n for LSTM), "c_n"."""

    def cast(t):
        return None if t is None else t.to(device=device, dtype=dtype)

    x = cast(case.x).requires_grad_()
    hx = [cast(h).requires_grad_() for h in case.hx]
    ws = [cast(w).requires_grad_() for w in case.weights]
    out, h_n = gated_forward(case, x, hx, ws, cast(case.masks), use_reference=use_reference)
    outputs, grads = [], []
    if "output" in losses:
        outputs.append(out)
        grads.append(cast(case.grad_out))
    for k, state in enumerate(h_n):
        if "h_n" in losses or (k == 1 and "c_n" in losses):
            outputs.append(state)
            grads.append(cast(case.grad_hn[k]))
    g = torch.autograd.grad(outputs, [x, *hx, *ws], grads, allow_unused=True)
    g = [torch.zeros_like(t) if gi is None else gi for gi, t in zip(g, [x, *hx, *ws])]
    return [out.detach(), *[h.detach() for h in h_n], *g]


def gated_names(case: GatedCase):
    states = ["h_n", "c_n"][: len(case.hx)]
    return (["output", *states, "grad_input"] + [f"grad_{s}0" for s in ["h", "c"][: len(case.hx)]]
            + [f"grad_weights[{i}]" for i in range(len(case.weights))])


def assert_gated_close(actual, expected, case, *, atol, rtol):
    assert len(actual) == len(expected) == len(gated_names(case))
    for a, e, n in zip(actual, expected, gated_names(case)):
        torch.testing.assert_close(a.double().cpu(), e.double().cpu(), atol=atol, rtol=rtol,
                                   msg=lambda m, n=n: f"{n}: {m}")


GATED_CASES = {
    "lstm-uni-dense": dict(mode="LSTM"),
    "lstm-proj-uni-dense": dict(mode="LSTM", proj_size=13),
    "lstm-bi-nobias-2layers-dropout": dict(mode="LSTM", num_layers=2, bidirectional=True,
                                           bias=False, dropout=0.4),
    "lstm-proj-bi-3layers-packed-dropout": dict(mode="LSTM", num_layers=3, bidirectional=True,
                                                proj_size=7, lengths=[7, 3, 5, 5, 1, 2],
                                                dropout=0.3),
    "lstm-proj-nobias-packed-equal": dict(mode="LSTM", proj_size=20, bias=False,
                                          bidirectional=True, lengths=[3, 3, 3]),
    "lstm-bi-wide": dict(mode="LSTM", bidirectional=True, T=4, N=9, I=40, H=70),
    "gru-uni-dense": dict(mode="GRU"),
    "gru-bi-nobias-2layers-dropout": dict(mode="GRU", num_layers=2, bidirectional=True,
                                          bias=False, dropout=0.4),
    "gru-bi-3layers-packed-dropout": dict(mode="GRU", num_layers=3, bidirectional=True,
                                          lengths=[7, 3, 5, 5, 1, 2], dropout=0.3),
    "gru-uni-2layers-packed": dict(mode="GRU", num_layers=2, lengths=[4, 6, 1, 6]),
    "gru-bi-wide": dict(mode="GRU", bidirectional=True, T=4, N=9, I=40, H=70),
}


@pytest.mark.parametrize("name", list(GATED_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gated_matches_float64_reference(name, dtype, no_tf32):
    case = make_gated_case(**GATED_CASES[name])
    expected = run_gated(case, "cpu", torch.float64, use_reference=True)
    actual = run_gated(case, "cuda", dtype)
    for t in actual:
        assert t.dtype == dtype and t.is_cuda
    if dtype == torch.float64:
        assert_gated_close(actual, expected, case, atol=1e-10, rtol=1e-9)
    else:
        # TF32 would be off by ~1e-3 here: this also checks the allow_tf32 flag is honoured.
        assert_gated_close(actual, expected, case, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(GATED_CASES))
@pytest.mark.parametrize(
    "dtype,fwd_tol,grad_tol", [(torch.float16, 5e-3, 1e-2), (torch.bfloat16, 3e-2, 1e-1)]
)
def test_gated_half_precision(name, dtype, fwd_tol, grad_tol):
    # Reference: float64 on the same 16-bit-rounded inputs, so only the kernels' error counts.
    case = make_gated_case(**GATED_CASES[name])
    expected = run_gated(round_case(case, dtype), "cpu", torch.float64, use_reference=True)
    actual = run_gated(case, "cuda", dtype)
    for t in actual:
        assert t.dtype == dtype
    assert_low_precision_close(actual, expected, gated_names(case), 1 + len(case.hx), fwd_tol,
                               grad_tol)


@pytest.mark.parametrize("losses", [("output",), ("h_n",), ("c_n",)], ids=lambda v: v[0])
@pytest.mark.parametrize("name", ["lstm-proj-bi-3layers-packed-dropout", "gru-uni-dense",
                                  "lstm-uni-dense"])
def test_gated_grads_through_one_output(name, losses, no_tf32):
    case = make_gated_case(**GATED_CASES[name])
    if losses == ("c_n",) and case.mode != "LSTM":
        losses = ("h_n",)
    expected = run_gated(case, "cpu", torch.float64, use_reference=True, losses=losses)
    actual = run_gated(case, "cuda", torch.float32, losses=losses)
    assert_gated_close(actual, expected, case, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_gated_never_runs_persistent_kernels(mode, monkeypatch, no_tf32):
    """RNNFAST_PERSISTENT=1 asks for the persistent kernels where they fit; they are
    Elman-only, so the gated cells take the per-step path, with the same results."""
    monkeypatch.setenv("RNNFAST_PERSISTENT", "1")
    case = make_gated_case(mode, num_layers=2, bidirectional=True, lengths=[5, 2, 4])
    expected = run_gated(case, "cpu", torch.float64, use_reference=True)
    before = ops._persistent_launches()
    actual = run_gated(case, "cuda", torch.float32)
    torch.cuda.synchronize()
    assert ops._persistent_launches() == before
    assert_gated_close(actual, expected, case, atol=5e-5, rtol=1e-4)


def test_gated_forward_without_train_matches_and_keeps_no_workspace(no_tf32):
    """train=False (no grad needed): no saved gates, same outputs as with train=True, and
    _rnn_backward refuses the workspace-less call as on the CPU."""
    for name in ["lstm-proj-bi-3layers-packed-dropout", "gru-bi-3layers-packed-dropout"]:
        case = make_gated_case(**GATED_CASES[name])
        x, hx = case.x.float().cuda(), [h.float().cuda() for h in case.hx]
        ws = [w.float().cuda() for w in case.weights]
        masks = case.masks.float().cuda()
        args = (x, hx, ws, case.batch_sizes, masks, case.mode, case.has_biases, case.num_layers,
                case.proj_size, case.bidirectional)
        out_t, hn_t, ws_t = ops.rnn_forward(*args, True)
        out_e, hn_e, ws_e = ops.rnn_forward(*args, False)
        assert len(ws_t) == 3 and len(ws_e) == 1
        assert torch.equal(out_t, out_e)
        for a, b in zip(hn_t, hn_e):
            assert torch.equal(a, b)
        with pytest.raises(RuntimeError, match="no saved gates"):
            ops._rnn_backward(out_e, [None] * len(hx), x, hx, ws, case.batch_sizes, masks, out_e,
                              ws_e, case.mode, case.has_biases, case.num_layers, case.proj_size,
                              case.bidirectional)


# cuDNN's nn.LSTM / nn.GRU against rnnfast.LSTM / GRU with the same parameters.
CUDNN_GATED = [
    ("LSTM", dict(num_layers=1), False),
    ("LSTM", dict(num_layers=2, bidirectional=True), True),
    ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=16), False),
    ("LSTM", dict(num_layers=3, proj_size=8, bias=False), True),
    ("GRU", dict(num_layers=1), False),
    ("GRU", dict(num_layers=2, bidirectional=True), True),
    ("GRU", dict(num_layers=3, bidirectional=True, bias=False), False),
]


@pytest.mark.parametrize("mode,kw,packed", CUDNN_GATED)
@pytest.mark.parametrize("dropout_in_eval", [False, True])
def test_gated_matches_cudnn(mode, kw, packed, dropout_in_eval, no_tf32):
    torch.manual_seed(0)
    T, N, I, H = 9, 6, 10, 48
    # Dropout between layers, which eval mode switches off (nn warns about it for one layer).
    kw = dict(kw, dropout=0.5 if dropout_in_eval and kw["num_layers"] > 1 else 0.0)
    torch_cls, ours_cls = (torch.nn.LSTM, rnnfast.LSTM) if mode == "LSTM" else (
        torch.nn.GRU, rnnfast.GRU)
    cudnn = torch_cls(I, H, **kw).cuda()
    ours = ours_cls(I, H, **kw).cuda()
    ours.load_state_dict(cudnn.state_dict())
    if dropout_in_eval:  # eval mode: no dropout, gradients still flow
        cudnn.eval()
        ours.eval()
    D = 2 if kw.get("bidirectional") else 1
    P = kw.get("proj_size", 0) or H
    x = torch.randn(T, N, I, device="cuda")
    h0 = torch.randn(kw["num_layers"] * D, N, P, device="cuda")
    c0 = torch.randn(kw["num_layers"] * D, N, H, device="cuda")
    lengths = torch.tensor([9, 2, 5, 9, 1, 7])
    results = []
    for model in (cudnn, ours):
        xi = x.clone().requires_grad_()
        states = [h0.clone().requires_grad_()]
        if mode == "LSTM":
            states.append(c0.clone().requires_grad_())
        inp = pack_padded_sequence(xi, lengths, enforce_sorted=False) if packed else xi
        out, state_n = model(inp, tuple(states) if mode == "LSTM" else states[0])
        state_n = list(state_n) if mode == "LSTM" else [state_n]
        out_data = out.data if packed else out
        gen = torch.Generator(device="cuda").manual_seed(1)
        go = torch.randn(out_data.shape, device="cuda", generator=gen)
        gs = [torch.randn(s.shape, device="cuda", generator=gen) for s in state_n]
        model.zero_grad()
        torch.autograd.backward([out_data, *state_n], [go, *gs])
        results.append([out_data.detach(), *[s.detach() for s in state_n], xi.grad,
                        *[s.grad for s in states]] + [p.grad for p in model.parameters()])
    for i, (a, e) in enumerate(zip(results[1], results[0])):
        torch.testing.assert_close(a, e, atol=5e-5, rtol=1e-4, msg=lambda m, i=i: f"[{i}] {m}")


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_gated_modules_and_cells_run_on_cuda(mode, no_tf32):
    """The modules end to end on CUDA (batch_first, unbatched input, default hx) and the
    cells (one T = 1 call of the sequence op), against nn's on the same parameters."""
    torch.manual_seed(2)
    torch_cls, ours_cls = (torch.nn.LSTM, rnnfast.LSTM) if mode == "LSTM" else (
        torch.nn.GRU, rnnfast.GRU)
    cudnn = torch_cls(5, 12, num_layers=2, batch_first=True).cuda()
    ours = ours_cls(5, 12, num_layers=2, batch_first=True).cuda()
    ours.load_state_dict(cudnn.state_dict())
    for x in (torch.randn(3, 8, 5, device="cuda"), torch.randn(8, 5, device="cuda")):
        expected, actual = cudnn(x), ours(x)
        torch.testing.assert_close(actual[0], expected[0], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(actual[1], expected[1], atol=2e-5, rtol=1e-4)
    cell_torch = (torch.nn.LSTMCell if mode == "LSTM" else torch.nn.GRUCell)(5, 12).cuda()
    cell_ours = (rnnfast.LSTMCell if mode == "LSTM" else rnnfast.GRUCell)(5, 12).cuda()
    cell_ours.load_state_dict(cell_torch.state_dict())
    x = torch.randn(4, 5, device="cuda", requires_grad=True)
    results = []
    for cell in (cell_torch, cell_ours):
        xi = x.detach().clone().requires_grad_()
        out = cell(xi)
        h = out[0] if mode == "LSTM" else out
        (h.square().sum() + (out[1].sum() if mode == "LSTM" else 0)).backward()
        results.append([h.detach(), xi.grad, *[p.grad for p in cell.parameters()]])
        cell.zero_grad()
    for a, e in zip(results[1], results[0]):
        torch.testing.assert_close(a, e, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_gated_backward_after_eval_forward(mode, no_tf32):
    torch.manual_seed(0)
    kw = dict(num_layers=2, dropout=0.5, bidirectional=True)
    if mode == "LSTM":
        kw["proj_size"] = 6
    model = (rnnfast.LSTM if mode == "LSTM" else rnnfast.GRU)(5, 16, **kw).cuda().eval()
    x = torch.randn(6, 3, 5, device="cuda", requires_grad=True)
    out, state_n = model(x)
    h_n = state_n[0] if mode == "LSTM" else state_n
    (out.sum() + h_n.pow(2).sum()).backward()
    params = list(model.parameters())
    # Oracle: the float64 reference with the same weights and no dropout (eval mode).
    x64 = x.detach().double().cpu().requires_grad_()
    w64 = [p.detach().double().cpu().requires_grad_() for p in params]
    P = kw.get("proj_size", 16)
    hx = [torch.zeros(4, 3, P, dtype=torch.float64)]
    if mode == "LSTM":
        hx.append(torch.zeros(4, 3, 16, dtype=torch.float64))
    o, h = reference.rnn_forward(x64, hx, w64, None, None, mode, True, 2, kw.get("proj_size", 0),
                                 True)
    (o.sum() + h[0].pow(2).sum()).backward()
    torch.testing.assert_close(x.grad.double().cpu(), x64.grad, atol=5e-5, rtol=1e-4)
    for p, r in zip(params, w64):
        torch.testing.assert_close(p.grad.double().cpu(), r.grad, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_gated_deterministic(mode, dtype):
    case = make_gated_case(mode, num_layers=3, bidirectional=True,
                           lengths=[30, 17, 30, 4, 22, 9, 30, 1], dropout=0.2, I=24, H=96,
                           proj_size=40 if mode == "LSTM" else 0)
    first = run_gated(case, "cuda", dtype)
    for _ in range(2):
        again = run_gated(case, "cuda", dtype)
        for a, b, n in zip(again, first, gated_names(case)):
            assert torch.equal(a, b), f"{n} differs between identical runs"


def poison_cuda_cache(value: float) -> None:
    """Fills memory the caching allocator will hand out next with `value`: blocks of the
    small (<= 1 MiB) and large pools are allocated, filled and freed (kept cached)."""
    blocks = [torch.empty(2**18, device="cuda") for _ in range(64)]  # 1 MiB each
    blocks += [torch.empty(2**22, device="cuda") for _ in range(8)]  # 16 MiB each
    for b in blocks:
        b.fill_(value)
    torch.cuda.synchronize()
    del blocks


@pytest.mark.parametrize("name", ["lstm-proj-bi-3layers-packed-dropout", "lstm-uni-dense",
                                  "gru-bi-3layers-packed-dropout"])
def test_gated_reads_no_uninitialised_memory(name, no_tf32):
    """Every buffer the kernels read was written first: with the allocator's memory
    filled with NaN before the call, results are finite and bitwise equal to those after
    filling it with zeros (uninitialised reads would give NaN or differ)."""
    case = make_gated_case(**GATED_CASES[name])
    poison_cuda_cache(0.0)
    clean = run_gated(case, "cuda", torch.float32)
    poison_cuda_cache(float("nan"))
    poisoned = run_gated(case, "cuda", torch.float32)
    for a, b, n in zip(poisoned, clean, gated_names(case)):
        assert torch.isfinite(a).all(), f"{n}: non-finite values after NaN poisoning"
        assert torch.equal(a, b), f"{n} depends on what the memory held before"


def gated_capture_and_replay(case: GatedCase):
    """Captures forward + backward (the ops, not autograd) of case in float32 in a CUDA
    graph after warm-up on a side stream, replays it on new input, and returns the
    replayed results and the eager results for that input."""
    x = case.x.float().cuda()
    hx = [h.float().cuda() for h in case.hx]
    ws = [w.float().cuda() for w in case.weights]
    go = case.grad_out.float().cuda()
    ghn = [g.float().cuda() for g in case.grad_hn]
    attrs = (case.mode, case.has_biases, case.num_layers, case.proj_size, case.bidirectional)

    def step():
        out, h_n, workspace = ops.rnn_forward(x, hx, ws, case.batch_sizes, None, *attrs, True)
        grad_x, grad_hx, grad_w = ops._rnn_backward(go, ghn, x, hx, ws, case.batch_sizes, None,
                                                    out, workspace, *attrs)
        return [out, *h_n, grad_x, *grad_hx, *grad_w]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    new_x = torch.randn_like(x)
    x.copy_(new_x)
    graph.replay()
    torch.cuda.synchronize()
    replayed = [t.clone() for t in static]
    eager = step()
    return replayed, eager


@pytest.mark.parametrize("name", ["lstm-proj-bi-3layers-packed-dropout", "gru-bi-wide"])
def test_gated_cuda_graph_capture(name, no_tf32):
    case = make_gated_case(**GATED_CASES[name])
    replayed, eager = gated_capture_and_replay(case)
    for a, b, n in zip(replayed, eager, gated_names(case)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


def test_lstm_long_sequence(no_tf32):
    """T = 100,000 steps of a small LSTM (forward + BPTT) against the float64 CPU kernels
    (which test_gated_parity.py holds to the reference): no drift, no overflow of row
    offsets, nothing lost over a long loop of launches."""
    case = make_gated_case("LSTM", T=100_000, N=2, I=3, H=8, seed=5)
    expected = run_gated(case, "cpu", torch.float64)
    actual = run_gated(case, "cuda", torch.float32)
    assert_low_precision_close(actual, expected, gated_names(case), 1 + len(case.hx),
                               fwd_tol=1e-4, grad_tol=1e-4)
