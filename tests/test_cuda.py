"""CUDA-specific tests of the rnnfast kernels (skipped without a GPU).

Oracles: the float64 CPU reference (rnnfast.reference) and cuDNN's nn.RNN with TF32
off. The parity tests run both recurrence paths (RNNFAST_PERSISTENT=0/1); the
persistent kernels have their own file, test_cuda_persistent.py. Also: bitwise determinism, eval-mode backward, gradients through only h_n or
only the output, the current (non-default) stream, a second GPU, CUDA graphs, and
float16 / bfloat16 tolerances. The device-independent semantics are covered by the
`device`-parametrized tests in the other files.
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
    if lengths is None:
        x = torch.randn(T, N, I, generator=g, dtype=torch.float64)
        batch_sizes = None
        out_shape = (T, N, D * H)
    else:
        N, T = len(lengths), max(lengths)
        padded = torch.randn(T, N, I, generator=g, dtype=torch.float64)
        packed = pack_padded_sequence(padded, torch.tensor(lengths), enforce_sorted=False)
        x, batch_sizes = packed.data, packed.batch_sizes
        out_shape = (x.shape[0], D * H)
    rows = x.shape[0] * (x.shape[1] if x.dim() == 3 else 1)
    hx = torch.randn(num_layers * D, N, H, generator=g, dtype=torch.float64) * 0.5
    masks = None
    if dropout and num_layers > 1:
        keep = torch.rand(num_layers - 1, rows, D * H, generator=g, dtype=torch.float64) > dropout
        masks = keep.double() / (1 - dropout)
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


def assert_low_precision_close(actual, expected, case, fwd_tol, grad_tol):
    """16-bit dtypes: output and h_n within fwd_tol * max(1, max |e|) elementwise; the
    gradients within grad_tol in relative Frobenius norm (ReLU's derivative jumps, so
    16-bit rounding of a pre-activation near 0 legitimately flips a few entries)."""
    for i, (a, e, n) in enumerate(zip(actual, expected, names(case))):
        a, e = a.double().cpu(), e.double().cpu()
        assert torch.isfinite(a).all(), f"{n}: non-finite values"
        if e.numel() == 0:
            continue
        if i < 2:
            err, tol = (a - e).abs().max().item(), fwd_tol * max(1.0, e.abs().max().item())
        else:
            err, tol = (a - e).norm().item(), grad_tol * max(1e-12, e.norm().item())
        assert err <= tol, f"{n}: error {err:.3g} > {tol:.3g}"


def round_case(case: Case, dtype) -> Case:
    """The case with every floating-point tensor rounded to dtype (kept in float64)."""

    def r(t):
        return t.to(dtype).double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    fields = {f.name: r(getattr(case, f.name)) for f in dataclasses.fields(case)}
    fields["weights"] = [r(w) for w in case.weights]
    return Case(**fields)


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
    assert_low_precision_close(actual, expected, case, fwd_tol, grad_tol)


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
