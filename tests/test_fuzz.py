"""Property-based fuzzing (hypothesis) of rnnfast.RNN, rnnfast.RNNCell and the raw op.

Specification: for *any* configuration drawn below, rnnfast computes the same forward
values and the same gradients as torch.nn (and, at the op level, as the pure-PyTorch
oracle rnnfast.reference), within a tolerance that depends only on the dtype:

    float64   within ~1e-9 of nn.RNN float64 (scaled by the magnitude of the result)
    float32   within ~1e-4 of the float64 result
    bfloat16 / float16   within a few units of their rounding (loose), compared with
              the float64 result computed from the *same rounded* inputs and weights;
              gradients of relu RNNs in relative norm (a pre-activation within rounding
              of 0 can switch sides and send its gradient down another path, as it
              does in nn.RNN in these dtypes)

The drawn configurations cover: sequence length (T=1 included), batch (N=0
included), input/hidden sizes (I=1, H=1 and sizes straddling the 16-wide vector
blocks of the AVX-512 kernels), layers, directions, batch_first, bias,
nonlinearity, hx given or not, unbatched input, and at the op level every mode
(RNN_TANH, RNN_RELU, LSTM with and without proj_size, GRU), packed sequences with random
lengths (sorted or not), non-contiguous, transposed and expanded (stride-0) input
and hx, requires_grad on any subset of (input, hx, each parameter), gradients
through output, h_n or both.

Profiles (hypothesis settings profiles, chosen with RNNFAST_FUZZ_PROFILE):

    ci    (default) 60 examples per test, small sizes; the whole file runs in
          well under 60 s. Every run draws fresh examples (not derandomized).
    long  thousands of examples per test and larger sizes, to run by hand:

        RNNFAST_FUZZ_PROFILE=long .venv/bin/python -m pytest -q tests/test_fuzz.py

A failure prints the shrunk configuration and a @reproduce_failure blob.
"""

from __future__ import annotations

import copy

import dataclasses
import os

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnfast

_COMMON = dict(
    deadline=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # `device` is a constant string per param
    ],
)
settings.register_profile("rnnfast-fuzz-ci", max_examples=60, **_COMMON)
settings.register_profile("rnnfast-fuzz-long", max_examples=3000, **_COMMON)
PROFILE = os.environ.get("RNNFAST_FUZZ_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    raise ValueError(f"RNNFAST_FUZZ_PROFILE must be 'ci' or 'long', got {PROFILE!r}")
FUZZ = settings.get_profile(f"rnnfast-fuzz-{PROFILE}")

# Size ranges per profile. Hidden sizes include 16/17/33: one full vector block, a
# block plus a masked tail, two blocks plus a tail.
if PROFILE == "long":
    T_MAX, N_MAX, I_MAX, LAYERS_MAX = 24, 12, 40, 3
    HIDDEN = [1, 2, 3, 5, 8, 15, 16, 17, 32, 33, 64, 65]
else:
    T_MAX, N_MAX, I_MAX, LAYERS_MAX = 6, 4, 6, 3
    HIDDEN = [1, 2, 3, 5, 8, 16, 17, 33]

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
LAYOUTS = ["contiguous", "noncontiguous", "transposed", "expanded"]

# Allowed error, relative to the largest magnitude of the expected tensor (at least 1).
# Worst cases measured over ~2,000 examples of each profile: 3e-15 (float64), 1e-5
# (float32, long sequences of relu), 4e-2 (bfloat16: 8-bit mantissa, and the layer
# outputs kept for backward are rounded to it) and 4e-3 (float16). Any real bug (a
# missing term, a wrong step, row or direction) gives errors of order 1.
REL_TOL = {
    torch.float64: 1e-9,
    torch.float32: 1e-4,
    torch.bfloat16: 1e-1,
    torch.float16: 2e-2,
}


SAME_DTYPE_FACTOR = {torch.float64: 2, torch.float32: 2, torch.bfloat16: 4, torch.float16: 4}


def _assert_close(actual, expected, dtype, what, same=None):
    """Within REL_TOL of the float64 result; or, when `same` (torch's own computation in
    `dtype`) is given, no more than SAME_DTYPE_FACTOR times as far from it as torch is:
    where the problem is ill-conditioned at this precision (relu pre-activations that
    round to the other side of 0, sums that cancel, long chains that amplify rounding),
    torch in the same dtype misses the float64 result too, by an amount that varies
    from draw to draw (measured: rnnfast bf16 0.4-2.2x of torch's bf16 error)."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    actual = actual.detach().to("cpu", torch.float64)
    expected = expected.detach().to("cpu", torch.float64)
    if expected.numel() == 0:
        return
    scale = max(1.0, expected.abs().max().item())
    err = (actual - expected).abs().max().item()
    tol = REL_TOL[dtype] * scale
    if err > tol and same is not None:
        err_same = (same.detach().to("cpu", torch.float64) - expected).abs().max().item()
        tol = max(tol, SAME_DTYPE_FACTOR[dtype] * err_same + REL_TOL[dtype] * scale)
    assert err <= tol, (
        f"{what}: max abs error {err:.3g} > {tol:.3g} (scale {scale:.3g}, {dtype})"
    )


# Gradients of relu RNNs in bf16/fp16 are only held to the right order of magnitude: a
# pre-activation that rounds to the other side of 0 reroutes its gradient, and over a
# long relu chain that happens in some draws for rnnfast and in others for nn.RNN
# (measured: relative error median 0.7% for rnnfast vs 1.5% for nn.RNN bf16, tails up to
# 50% for both). The relu epilogue is the same code for every dtype (checked tightly in
# float32/float64 here), and the bf16 operand path is checked tightly with tanh.
RELU_LOW_PRECISION_GRAD_NORM_TOL = 1.0


def _assert_grad_close(actual, expected, dtype, what, nonlinearity, same=None):
    if nonlinearity != "relu" or dtype not in (torch.bfloat16, torch.float16):
        return _assert_close(actual, expected, dtype, what, same)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    actual = actual.detach().to("cpu", torch.float64)
    expected = expected.detach().to("cpu", torch.float64)
    err, ref = (actual - expected).norm().item(), expected.norm().item()
    tol = RELU_LOW_PRECISION_GRAD_NORM_TOL * ref + REL_TOL[dtype]
    if err > tol and same is not None:
        err_same = (same.detach().to("cpu", torch.float64) - expected).norm().item()
        if err_same > 0.1 * ref:  # torch is off by 10% too: the draw is chaotic at this
            return                # precision (exploding relu chain); nothing to compare
        tol = max(tol, SAME_DTYPE_FACTOR[dtype] * err_same)
    assert err <= tol, f"{what}: relative norm error {err:.3g} / {ref:.3g} > {tol:.3g} ({dtype}, relu)"


def _representable(dtype, *tensors):
    """Whether every exact (float64) result fits in `dtype`: draws whose result overflows
    it (float16 relu stacks reach 1e5) are discarded, not compared."""
    limit = torch.finfo(dtype).max / 2
    flat = []
    for t in tensors:
        flat += list(t.values()) if isinstance(t, dict) else list(t) if isinstance(t, (list, tuple)) else [t]
    return all(t.abs().max().item() < limit for t in flat if t is not None and t.numel())


def _layout(logical_shape, layout, expand_dim):
    """(shape of the leaf tensor, function leaf -> view with `logical_shape`)."""
    shape = tuple(logical_shape)
    if layout == "contiguous":
        return shape, lambda t: t
    if layout == "noncontiguous":  # every second element of the last dim
        return shape[:-1] + (2 * shape[-1],), lambda t: t[..., ::2]
    if layout == "transposed":
        return (shape[1], shape[0]) + shape[2:], lambda t: t.transpose(0, 1)
    assert layout == "expanded"  # stride 0 along expand_dim
    base = list(shape)
    base[expand_dim] = 1
    return tuple(base), lambda t: t.expand(shape)


def _leaf(shape, dtype, gen, requires_grad, device):
    # Drawn in float64 then rounded to dtype: the float64 oracle sees the same values.
    t = torch.randn(shape, dtype=torch.float64, generator=gen).to(dtype).to(device)
    return t.requires_grad_(requires_grad)


# ---------------------------------------------------------------------------
# rnnfast.RNN vs torch.nn.RNN
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class RNNCase:
    T: int
    N: int
    I: int
    H: int
    num_layers: int
    bidirectional: bool
    batch_first: bool
    bias: bool
    nonlinearity: str
    batched: bool
    packed: bool
    lengths: list
    enforce_sorted: bool
    with_hx: bool
    x_layout: str
    hx_layout: str
    dtype: torch.dtype
    x_grad: bool
    hx_grad: bool
    frozen: list  # per parameter, in named_parameters() order: True = requires_grad False
    target: str  # "output", "h_n" or "both"
    seed: int


@st.composite
def rnn_cases(draw):
    T = draw(st.integers(1, T_MAX))
    packed = draw(st.booleans())
    batched = packed or draw(st.booleans())
    N = draw(st.integers(1 if packed else 0, N_MAX)) if batched else 1
    num_layers = draw(st.integers(1, LAYERS_MAX))
    bidirectional = draw(st.booleans())
    bias = draw(st.booleans())
    n_params = num_layers * (2 if bidirectional else 1) * (4 if bias else 2)
    lengths, enforce_sorted = [], False
    if packed:
        lengths = draw(st.lists(st.integers(1, T), min_size=N, max_size=N))
        enforce_sorted = draw(st.booleans())
        if enforce_sorted:
            lengths = sorted(lengths, reverse=True)
    with_hx = draw(st.booleans())
    return RNNCase(
        T=T,
        N=N,
        I=draw(st.integers(1, I_MAX)),
        H=draw(st.sampled_from(HIDDEN)),
        num_layers=num_layers,
        bidirectional=bidirectional,
        batch_first=draw(st.booleans()),
        bias=bias,
        nonlinearity=draw(st.sampled_from(["tanh", "relu"])),
        batched=batched,
        packed=packed,
        lengths=lengths,
        enforce_sorted=enforce_sorted,
        with_hx=with_hx,
        x_layout=draw(st.sampled_from(LAYOUTS)),
        hx_layout=draw(st.sampled_from(LAYOUTS)),
        dtype=draw(st.sampled_from(DTYPES)),
        x_grad=draw(st.booleans()),
        hx_grad=with_hx and draw(st.booleans()),
        frozen=draw(st.lists(st.booleans(), min_size=n_params, max_size=n_params)),
        target=draw(st.sampled_from(["output", "h_n", "both"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _run_rnn(module, case, x_base, hx_base, x_view, hx_view, cotangents):
    """Forward + gradients w.r.t. every leaf that requires grad. Returns (outs, grads)."""
    x = x_view(x_base)
    if case.packed:
        lengths = torch.tensor(case.lengths, dtype=torch.int64)
        x = pack_padded_sequence(x, lengths, batch_first=case.batch_first,
                                 enforce_sorted=case.enforce_sorted)
    hx = hx_view(hx_base) if hx_base is not None else None
    output, h_n = module(x, hx) if hx is not None else module(x)
    out_data = output.data if isinstance(output, PackedSequence) else output
    named = [("input", x_base), ("hx", hx_base), *module.named_parameters()]
    names = [n for n, t in named if t is not None and t.requires_grad]
    wrt = [t for n, t in named if t is not None and t.requires_grad]
    outs, cots = [], []
    if case.target in ("output", "both"):
        outs.append(out_data)
        cots.append(cotangents[0].to(out_data))
    if case.target in ("h_n", "both"):
        outs.append(h_n)
        cots.append(cotangents[1].to(h_n))
    if not wrt:
        assert not out_data.requires_grad and not h_n.requires_grad
        return (out_data, h_n), {}
    grads = torch.autograd.grad(outs, wrt, cots, allow_unused=True)
    return (out_data, h_n), {n: torch.zeros_like(w) if g is None else g
                             for n, g, w in zip(names, grads, wrt)}


@FUZZ
@given(case=rnn_cases())
def test_rnn_matches_nn_rnn(case, device):
    gen = torch.Generator().manual_seed(case.seed)
    D = 2 if case.bidirectional else 1
    kwargs = dict(num_layers=case.num_layers, nonlinearity=case.nonlinearity, bias=case.bias,
                  batch_first=case.batch_first, bidirectional=case.bidirectional)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(case.seed)
        new = rnnfast.RNN(case.I, case.H, device=device, dtype=case.dtype, **kwargs)
    ref = nn.RNN(case.I, case.H, dtype=torch.float64, **kwargs)
    ref.load_state_dict({k: v.to("cpu", torch.float64) for k, v in new.state_dict().items()})
    for frozen, p_new, p_ref in zip(case.frozen, new.parameters(), ref.parameters()):
        p_new.requires_grad_(not frozen)
        p_ref.requires_grad_(not frozen)

    # Input (padded when packed) and hx: a leaf tensor and a view of it with the layout.
    if case.batched:
        x_shape = (case.N, case.T, case.I) if case.batch_first else (case.T, case.N, case.I)
        x_expand_dim = 0 if case.batch_first else 1  # the batch dimension
        hx_shape, hx_expand_dim = (case.num_layers * D, case.N, case.H), 0
    else:
        x_shape, x_expand_dim = (case.T, case.I), 0
        hx_shape, hx_expand_dim = (case.num_layers * D, case.H), 0
    if case.packed and case.x_layout == "expanded":
        x_expand_dim = 1 - x_expand_dim  # packed: all steps equal, sequences differ
    x_leaf_shape, x_view = _layout(x_shape, case.x_layout, x_expand_dim)
    hx_leaf_shape, hx_view = _layout(hx_shape, case.hx_layout, hx_expand_dim)
    x_base = _leaf(x_leaf_shape, case.dtype, gen, case.x_grad, device)
    hx_base = _leaf(hx_leaf_shape, case.dtype, gen, case.hx_grad, device) if case.with_hx else None
    x_ref = x_base.detach().to("cpu", torch.float64).requires_grad_(case.x_grad)
    hx_ref = (hx_base.detach().to("cpu", torch.float64).requires_grad_(case.hx_grad)
              if case.with_hx else None)

    # Cotangents for (output data, h_n), drawn once in float64.
    if case.packed:
        out_shape = (sum(case.lengths), D * case.H)
    elif not case.batched:
        out_shape = (case.T, D * case.H)
    else:
        out_shape = x_shape[:2] + (D * case.H,)
    cot = (torch.randn(out_shape, dtype=torch.float64, generator=gen),
           torch.randn(hx_shape, dtype=torch.float64, generator=gen))

    (out, h_n), grads = _run_rnn(new, case, x_base, hx_base, x_view, hx_view,
                                 [c.to(device) for c in cot])
    (out_ref, h_n_ref), grads_ref = _run_rnn(ref, case, x_ref, hx_ref, x_view, hx_view, cot)
    assume(_representable(case.dtype, out_ref, h_n_ref, grads_ref))
    # nn.RNN in the case's dtype on the same rounded values: how far torch itself lands.
    same = copy.deepcopy(ref).to(case.dtype)
    for frozen, p in zip(case.frozen, same.parameters()):
        p.requires_grad_(not frozen)
    x_same = x_ref.detach().to(case.dtype).requires_grad_(case.x_grad)
    hx_same = (hx_ref.detach().to(case.dtype).requires_grad_(case.hx_grad)
               if case.with_hx else None)
    try:
        (out_same, h_n_same), grads_same = _run_rnn(same, case, x_same, hx_same, x_view,
                                                    hx_view, [c.to(case.dtype) for c in cot])
    except RuntimeError:  # a dtype nn.RNN does not run on the CPU: no second opinion
        out_same = h_n_same = None
        grads_same = {}

    assert out.dtype == case.dtype and h_n.dtype == case.dtype
    assert out.device.type == torch.device(device).type
    _assert_close(out, out_ref, case.dtype, "output", out_same)
    _assert_close(h_n, h_n_ref, case.dtype, "h_n", h_n_same)
    assert grads.keys() == grads_ref.keys()
    for name, g in grads.items():
        assert g.dtype == case.dtype, f"grad {name}: dtype {g.dtype}"
        _assert_grad_close(g, grads_ref[name], case.dtype, f"grad {name}", case.nonlinearity,
                           grads_same.get(name))


# ---------------------------------------------------------------------------
# torch.ops.rnnfast.rnn_forward vs rnnfast.reference, with explicit dropout masks
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class OpCase:
    T: int
    N: int
    I: int
    H: int
    num_layers: int
    bidirectional: bool
    has_biases: bool
    mode: str  # "RNN_TANH", "RNN_RELU", "LSTM" or "GRU"
    proj_size: int  # LSTM only; 0 = no projection
    batch_sizes: list  # [] = dense input
    keep: float  # dropout keep probability of the masks (0 = p=1: all zero)
    with_masks: bool
    dtype: torch.dtype
    grad_output: bool
    grad_h_n: bool
    seed: int


@st.composite
def op_cases(draw):
    packed = draw(st.booleans())
    T = draw(st.integers(1, T_MAX))
    N = draw(st.integers(1 if packed else 0, N_MAX))
    batch_sizes = []
    if packed:  # non-increasing, positive, first = N
        batch_sizes = sorted(draw(st.lists(st.integers(1, N), min_size=T - 1, max_size=T - 1)),
                             reverse=True)
        batch_sizes = [N] + batch_sizes
    grad_output = draw(st.booleans())
    H = draw(st.sampled_from(HIDDEN))
    mode = draw(st.sampled_from(["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]))
    proj_size = draw(st.integers(0, H - 1)) if mode == "LSTM" and H > 1 else 0
    return OpCase(
        T=T, N=N, I=draw(st.integers(1, I_MAX)), H=H,
        num_layers=draw(st.integers(1, LAYERS_MAX)), bidirectional=draw(st.booleans()),
        has_biases=draw(st.booleans()), mode=mode, proj_size=proj_size,
        batch_sizes=batch_sizes, keep=draw(st.sampled_from([0.0, 0.3, 0.8, 1.0])),
        with_masks=draw(st.booleans()), dtype=draw(st.sampled_from(DTYPES)),
        grad_output=grad_output, grad_h_n=draw(st.booleans()) or not grad_output,
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@FUZZ
@given(case=op_cases())
def test_op_matches_reference(case, device):
    """The raw op (what rnnfast.functional calls) against the pure-PyTorch oracle, for
    every mode (LSTM with and without proj_size), including inter-layer dropout masks
    and packed batch_sizes drawn at random."""
    gen = torch.Generator().manual_seed(case.seed)
    D = 2 if case.bidirectional else 1
    G = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}[case.mode]
    H = case.H
    P = case.proj_size or H  # the width of h, the output and the layers above
    packed = bool(case.batch_sizes)
    rows = sum(case.batch_sizes) if packed else case.T * case.N

    def rand(*shape, scale=1.0):
        t = (torch.randn(shape, dtype=torch.float64, generator=gen) * scale).to(case.dtype)
        return t.to(torch.float64)  # the values the low-precision kernels will see

    weights = []  # nn.RNNBase._flat_weights order: w_ih, w_hh, [b_ih, b_hh], [w_hr]
    for layer in range(case.num_layers):
        fan_in = case.I if layer == 0 else D * P
        for _ in range(D):
            weights += [rand(G * H, fan_in, scale=fan_in**-0.5), rand(G * H, P, scale=P**-0.5)]
            if case.has_biases:
                weights += [rand(G * H, scale=0.5), rand(G * H, scale=0.5)]
            if case.proj_size:
                weights.append(rand(P, H, scale=H**-0.5))
    x = rand(rows, case.I) if packed else rand(case.T, case.N, case.I)
    hx = [rand(case.num_layers * D, case.N, P)]  # h0, and c0 for LSTM
    if case.mode == "LSTM":
        hx.append(rand(case.num_layers * D, case.N, H))
    batch_sizes = torch.tensor(case.batch_sizes, dtype=torch.int64) if packed else None
    masks = None
    if case.with_masks and case.num_layers > 1:
        keep = torch.rand(case.num_layers - 1, rows, D * P, generator=gen) < case.keep
        masks = keep.to(torch.float64) / case.keep if case.keep > 0 else keep.to(torch.float64)
        masks = masks.to(case.dtype).to(torch.float64)
    args = (batch_sizes, case.mode, case.has_biases, case.num_layers, case.proj_size,
            case.bidirectional)

    def op(input, hx, weights, bs, m, mode, hb, nl, proj, bi):
        output, h_n, _ = torch.ops.rnnfast.rnn_forward(input, hx, weights, bs, m, mode, hb,
                                                       nl, proj, bi, True)
        return output, h_n

    def run(fn, dtype, dev):
        leaves = [t.to(dev, dtype).requires_grad_() for t in [x, *hx, *weights]]
        S = len(hx)
        m = masks.to(dev, dtype) if masks is not None else None
        bs, mode, hb, nl, proj, bi = args
        out, h_n = fn(leaves[0], leaves[1:1 + S], leaves[1 + S:], bs, m, mode, hb, nl, proj,
                      bi)
        assert len(h_n) == S
        outs, cots = [], []
        if case.grad_output:
            outs.append(out)
            cots.append(go.to(dev, dtype))
        if case.grad_h_n:
            outs += list(h_n)
            cots += [g.to(dev, dtype) for g in gh]
        grads = torch.autograd.grad(outs, leaves, cots, allow_unused=True)
        grads = [torch.zeros_like(l) if g is None else g for g, l in zip(grads, leaves)]
        return out, list(h_n), grads

    out_shape = (rows, D * P) if packed else (case.T, case.N, D * P)
    go = torch.randn(out_shape, dtype=torch.float64, generator=gen)
    gh = [torch.randn(h.shape, dtype=torch.float64, generator=gen) for h in hx]

    out, h_n, grads = run(op, case.dtype, device)
    out_ref, h_n_ref, grads_ref = run(rnnfast.reference.rnn_forward, torch.float64, "cpu")
    assume(_representable(case.dtype, out_ref, *h_n_ref, grads_ref))
    # The pure-PyTorch reference in the case's dtype: how far torch's own ops land.
    out_same, h_n_same, grads_same = run(rnnfast.reference.rnn_forward, case.dtype, "cpu")
    _assert_close(out, out_ref, case.dtype, "output", out_same)
    state_names = ["h_n", "c_n"]
    for i in range(len(hx)):
        _assert_close(h_n[i], h_n_ref[i], case.dtype, state_names[i], h_n_same[i])
    names = ["input"] + ["h0", "c0"][:len(hx)] + [f"weights[{i}]" for i in range(len(weights))]
    # Only relu's gradients are held to the looser low-precision norm check.
    nonlinearity = "relu" if case.mode == "RNN_RELU" else "tanh"
    for name, g, g_ref, g_same in zip(names, grads, grads_ref, grads_same, strict=True):
        _assert_grad_close(g, g_ref, case.dtype, f"grad {name}", nonlinearity, g_same)


# ---------------------------------------------------------------------------
# rnnfast.RNNCell vs torch.nn.RNNCell
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class CellCase:
    N: int
    I: int
    H: int
    bias: bool
    nonlinearity: str
    batched: bool
    with_hx: bool
    x_layout: str
    hx_layout: str
    dtype: torch.dtype
    x_grad: bool
    hx_grad: bool
    frozen: list
    seed: int


@st.composite
def cell_cases(draw):
    bias = draw(st.booleans())
    with_hx = draw(st.booleans())
    batched = draw(st.booleans())
    n_params = 4 if bias else 2
    return CellCase(
        N=draw(st.integers(0, N_MAX + 2)) if batched else 1,
        I=draw(st.sampled_from([0, 1, 2, 3, 7, 16, 17])),
        H=draw(st.sampled_from([0] + HIDDEN)),
        bias=bias, nonlinearity=draw(st.sampled_from(["tanh", "relu"])), batched=batched,
        with_hx=with_hx, x_layout=draw(st.sampled_from(LAYOUTS)),
        hx_layout=draw(st.sampled_from(LAYOUTS)), dtype=draw(st.sampled_from(DTYPES)),
        x_grad=draw(st.booleans()), hx_grad=with_hx and draw(st.booleans()),
        frozen=draw(st.lists(st.booleans(), min_size=n_params, max_size=n_params)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@FUZZ
@given(case=cell_cases())
def test_cell_matches_nn_rnncell(case, device):
    gen = torch.Generator().manual_seed(case.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(case.seed)
        new = rnnfast.RNNCell(case.I, case.H, bias=case.bias, nonlinearity=case.nonlinearity,
                              device=device, dtype=case.dtype)
    ref = nn.RNNCell(case.I, case.H, bias=case.bias, nonlinearity=case.nonlinearity,
                     dtype=torch.float64)
    ref.load_state_dict({k: v.to("cpu", torch.float64) for k, v in new.state_dict().items()})
    for frozen, p_new, p_ref in zip(case.frozen, new.parameters(), ref.parameters()):
        p_new.requires_grad_(not frozen)
        p_ref.requires_grad_(not frozen)

    x_shape = (case.N, case.I) if case.batched else (case.I,)
    hx_shape = (case.N, case.H) if case.batched else (case.H,)
    x_layout = case.x_layout if case.batched else "contiguous" if case.x_layout == "transposed" \
        else case.x_layout
    hx_layout = case.hx_layout if case.batched else "contiguous" if case.hx_layout == "transposed" \
        else case.hx_layout
    x_leaf_shape, x_view = _layout(x_shape, x_layout, 0)
    hx_leaf_shape, hx_view = _layout(hx_shape, hx_layout, 0)
    x_base = _leaf(x_leaf_shape, case.dtype, gen, case.x_grad, device)
    hx_base = _leaf(hx_leaf_shape, case.dtype, gen, case.hx_grad, device) if case.with_hx else None
    cot = torch.randn(hx_shape, dtype=torch.float64, generator=gen)

    def run(module, x_base, hx_base, cot):
        h = module(x_view(x_base), hx_view(hx_base)) if hx_base is not None \
            else module(x_view(x_base))
        named = [("input", x_base), ("hx", hx_base), *module.named_parameters()]
        named = [(n, t) for n, t in named if t is not None and t.requires_grad]
        if not named:
            assert not h.requires_grad
            return h, {}
        grads = torch.autograd.grad([h], [t for _, t in named], [cot.to(h)], allow_unused=True)
        return h, {n: torch.zeros_like(t) if g is None else g for (n, t), g in zip(named, grads)}

    h, grads = run(new, x_base, hx_base, cot.to(device))
    h_ref, grads_ref = run(
        ref, x_base.detach().to("cpu", torch.float64).requires_grad_(case.x_grad),
        hx_base.detach().to("cpu", torch.float64).requires_grad_(case.hx_grad)
        if hx_base is not None else None, cot)
    assert h.dtype == case.dtype
    _assert_close(h, h_ref, case.dtype, "h")
    assert grads.keys() == grads_ref.keys()
    for name, g in grads.items():
        assert g.dtype == case.dtype, f"grad {name}: dtype {g.dtype}"
        _assert_close(g, grads_ref[name], case.dtype, f"grad {name}")
