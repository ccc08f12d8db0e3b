"""What an nn.Module must survive, checked on rnnfast.RNN and rnnfast.RNNCell, and (deepcopy,
save/load, functional_call, weight_norm, dtype moves) on LSTM, GRU, LSTMCell and GRUCell.

Each test applies a standard PyTorch transformation to an rnnfast module and checks
that it still computes what the same transformation gives for torch.nn.RNN /
RNNCell (same weights), and that the flat weight list stays the module's live
parameters (compat §2.3): deepcopy, torch.save/torch.load of the whole module,
torch.func.functional_call, the weight_norm parametrization, dtype conversions
(.to(dtype), .double(), .half(), .bfloat16()), to_empty, flatten_parameters,
torch.export and torch.compile(fullgraph=True) with dense and packed input.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn
from torch.nn.utils import prune
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import rnnfast
from cells import GATED, GATED_STEP, map_states, result_tensors, state_width
from cells import make_pair as make_cell_pair

F64 = dict(atol=1e-10, rtol=0)
F32 = dict(atol=1e-5, rtol=1e-5)

# The export warning nn.RNN gives too: RNNBase keeps its weights in a plain list.
pytestmark = pytest.mark.filterwarnings("ignore:The tensor attributes .*_flat_weights")


def make_pair(*args, device="cpu", dtype=torch.float64, seed=0, **kwargs):
    torch.manual_seed(seed)
    ref = nn.RNN(*args, device=device, dtype=dtype, **kwargs)
    new = rnnfast.RNN(*args, device=device, dtype=dtype, **kwargs)
    new.load_state_dict(ref.state_dict())
    return ref, new


def randn(*shape, device="cpu", dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype).to(device)


def assert_live_flat_weights(module):
    params = dict(module.named_parameters())
    for name, w in zip(module._flat_weights_names, module._flat_weights):
        assert w is params[name], name


def assert_same_outputs(a, b, tol=F64):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, **tol)


# --------------------------------------------------------------------------- copies, pickling


def test_deepcopy(device):
    _, new = make_pair(3, 4, 2, bidirectional=True, device=device)
    x = randn(5, 2, 3, device=device)
    clone = copy.deepcopy(new)
    assert_same_outputs(clone(x), new(x))
    assert_live_flat_weights(clone)
    assert not any(a is b for a, b in zip(clone.parameters(), new.parameters()))
    with torch.no_grad():
        clone.weight_hh_l0.mul_(2)  # the copy is independent
    assert not torch.equal(clone(x)[0], new(x)[0])
    cell = rnnfast.RNNCell(3, 4, nonlinearity="relu").to(device)
    xc = randn(2, 3, device=device, dtype=torch.float32)
    torch.testing.assert_close(copy.deepcopy(cell)(xc), cell(xc), atol=0, rtol=0)


def state_dict_round_trip(module):
    """A copy of `module` with scrambled parameters into which module's state_dict was
    loaded back through torch.save / torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    fresh = copy.deepcopy(module)
    for p in fresh.parameters():
        p.data.uniform_()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


@pytest.mark.parametrize("what", ["RNN", "RNNCell"])
def test_torch_save_and_load_of_the_module(device, what):
    torch.manual_seed(0)
    if what == "RNN":
        module = rnnfast.RNN(3, 4, 2, batch_first=True, dropout=0.2).to(device).eval()
        x = randn(2, 5, 3, device=device, dtype=torch.float32)
    else:
        module = rnnfast.RNNCell(3, 4, bias=False).to(device)
        x = randn(2, 3, device=device, dtype=torch.float32)
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is type(module) and repr(loaded) == repr(module)
    assert loaded.training == module.training
    if what == "RNN":
        assert_live_flat_weights(loaded)
        assert_same_outputs(loaded(x), module(x), dict(atol=0, rtol=0))
    else:
        torch.testing.assert_close(loaded(x), module(x), atol=0, rtol=0)
    # state_dict round trip through torch.save (weights_only=True) too
    fresh = state_dict_round_trip(module)
    out_a, out_b = fresh(x), module(x)
    torch.testing.assert_close(out_a[0] if what == "RNN" else out_a,
                               out_b[0] if what == "RNN" else out_b, atol=0, rtol=0)


# --------------------------------------------------------------------------- functional_call


def test_functional_call_uses_the_given_tensors_then_reverts(device):
    ref, new = make_pair(3, 4, 2, bidirectional=True, device=device)
    x = randn(5, 2, 3, device=device)
    before = new(x)
    other = {n: randn(*p.shape, device=device, seed=i + 10).requires_grad_()
             for i, (n, p) in enumerate(new.named_parameters())}
    out = torch.func.functional_call(new, other, (x,))
    expected = torch.func.functional_call(ref, other, (x,))
    assert_same_outputs(out, expected)
    grads = torch.autograd.grad(out[0].sum() + out[1].sum(), list(other.values()))
    grads_ref = torch.autograd.grad(expected[0].sum() + expected[1].sum(), list(other.values()))
    assert_same_outputs(grads, grads_ref)
    zeros = {n: torch.zeros_like(p) for n, p in new.named_parameters()}
    assert torch.func.functional_call(new, zeros, (x,))[0].abs().max() == 0
    assert_same_outputs(new(x), before)  # back to its own parameters
    assert_live_flat_weights(new)


def test_functional_call_on_the_cell(device):
    cell = rnnfast.RNNCell(3, 4).to(device=device, dtype=torch.float64)
    ref = nn.RNNCell(3, 4).to(device=device, dtype=torch.float64)
    params = {n: randn(*p.shape, device=device, seed=i) for i, (n, p) in
              enumerate(cell.named_parameters())}
    x = randn(2, 3, device=device)
    torch.testing.assert_close(torch.func.functional_call(cell, params, (x,)),
                               torch.func.functional_call(ref, params, (x,)), **F64)


def test_vmap_over_the_module_matches_a_loop(device):
    _, new = make_pair(2, 3, 2, bidirectional=True, device=device)
    xs = randn(4, 5, 1, 2, device=device)  # 4 independent (L, N, H_in) inputs
    out, h_n = torch.vmap(new)(xs)
    for i in range(4):
        assert_same_outputs((out[i], h_n[i]), new(xs[i]))


# --------------------------------------------------------------------------- parametrizations


def test_weight_norm_parametrization(device):
    ref, new = make_pair(3, 4, 2, device=device)
    for m in (ref, new):
        nn.utils.parametrizations.weight_norm(m, "weight_hh_l0")
        nn.utils.parametrizations.weight_norm(m, "weight_ih_l1")
    new.load_state_dict(ref.state_dict())
    x = randn(5, 2, 3, device=device)
    out_r, out_n = ref(x), new(x)
    assert_same_outputs(out_n, out_r)
    originals = lambda m: [p for n, p in m.named_parameters() if "original" in n]  # noqa: E731
    g_r = torch.autograd.grad(out_r[0].sum() + out_r[1].sum(), originals(ref))
    g_n = torch.autograd.grad(out_n[0].sum() + out_n[1].sum(), originals(new))
    assert len(g_n) == 4
    assert_same_outputs(g_n, g_r)
    # Changing the magnitude parameter changes the output (the parametrization is live).
    with torch.no_grad():
        new.parametrizations.weight_hh_l0.original0.mul_(3)
    assert not torch.allclose(new(x)[0], out_n[0])


def test_pruning_and_weight_tying(device):
    ref, new = make_pair(3, 4, 1, bidirectional=True, device=device)
    for m in (ref, new):
        prune.l1_unstructured(m, "weight_hh_l0", amount=0.5)
        m.bias_ih_l0_reverse = m.bias_ih_l0  # tie
    x = randn(5, 2, 3, device=device)
    assert_same_outputs(new(x), ref(x))


# --------------------------------------------------------------------------- dtype and device


def test_to_dtype_and_double(device):
    ref, new = make_pair(3, 4, 2, bidirectional=True, device=device, dtype=torch.float32)
    x = randn(5, 2, 3, device=device)
    for convert in (lambda m: m.double(), lambda m: m.to(torch.float64),
                    lambda m: m.to(device=device, dtype=torch.float64)):
        r, n = convert(copy.deepcopy(ref)), convert(copy.deepcopy(new))
        assert all(p.dtype == torch.float64 for p in n.parameters())
        assert_live_flat_weights(n)
        out = n(x)
        assert out[0].dtype == torch.float64
        assert_same_outputs(out, r(x))
    back = copy.deepcopy(new).double().float()
    assert_same_outputs(back(x.float()), new(x.float()), dict(atol=0, rtol=0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_and_bfloat16_modules(device, dtype):
    # Waits on the fp16/bf16 kernels. Tolerance: the error of the low-precision result
    # against float64 math on the same (rounded) weights and input.
    ref, new = make_pair(4, 8, 2, bidirectional=True, device=device, dtype=torch.float32)
    new = new.half() if dtype == torch.float16 else new.bfloat16()
    assert all(p.dtype == dtype for p in new.parameters())
    assert_live_flat_weights(new)
    x = randn(6, 3, 4, device=device, dtype=dtype)
    out, h_n = new(x)
    assert out.dtype == h_n.dtype == dtype
    exact = rnnfast.RNN(4, 8, 2, bidirectional=True, device=device, dtype=torch.float64)
    exact.load_state_dict({k: v.double() for k, v in new.state_dict().items()})
    out64, h64 = exact(x.double())
    tol = 4e-3 if dtype == torch.float16 else 3e-2
    torch.testing.assert_close(out.double(), out64, atol=tol, rtol=0)
    torch.testing.assert_close(h_n.double(), h64, atol=tol, rtol=0)
    (out.float().sum() + h_n.float().sum()).backward()
    assert all(p.grad is not None and p.grad.dtype == dtype for p in new.parameters())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_and_bfloat16_cell(device, dtype):
    # Waits on the fp16/bf16 kernels.
    torch.manual_seed(0)
    cell = rnnfast.RNNCell(4, 8).to(device=device, dtype=dtype)
    exact = rnnfast.RNNCell(4, 8).to(device=device, dtype=torch.float64)
    exact.load_state_dict({k: v.double() for k, v in cell.state_dict().items()})
    x = randn(3, 4, device=device, dtype=dtype)
    h = cell(x)
    assert h.dtype == dtype
    tol = 4e-3 if dtype == torch.float16 else 3e-2
    torch.testing.assert_close(h.double(), exact(x.double()), atol=tol, rtol=0)


def test_to_empty_then_load_state_dict(device):
    ref, _ = make_pair(3, 4, 2, device=device)
    meta = rnnfast.RNN(3, 4, 2, device="meta", dtype=torch.float64)
    assert meta(torch.empty(5, 2, 3, device="meta", dtype=torch.float64))[0].shape == (5, 2, 4)
    real = meta.to_empty(device=device)
    assert all(p.device.type == device for p in real.parameters())
    assert_live_flat_weights(real)
    real.load_state_dict(ref.state_dict())
    x = randn(5, 2, 3, device=device)
    assert_same_outputs(real(x), ref(x))
    cell = rnnfast.RNNCell(3, 4, device="meta").to_empty(device=device)
    cell.reset_parameters()
    assert cell(randn(2, 3, device=device, dtype=torch.float32)).shape == (2, 4)


def test_flatten_parameters_in_forward_is_accepted(device):
    class Wrapper(nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn

        def forward(self, x):
            self.rnn.flatten_parameters()
            return self.rnn(x)

    ref, new = make_pair(3, 4, 2, device=device)
    x = randn(5, 2, 3, device=device)
    assert new.flatten_parameters() is None
    assert_same_outputs(Wrapper(new)(x), ref(x))
    assert_live_flat_weights(new)


# --------------------------------------------------------------------------- torch.export


def test_export_static_shapes(device):
    _, new = make_pair(3, 4, 2, bidirectional=True, batch_first=True, device=device)
    x = randn(2, 5, 3, device=device)
    hx = randn(4, 2, 4, device=device, seed=2)
    exported = torch.export.export(new, (x, hx))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "rnnfast.rnn_forward.default" in targets
    assert_same_outputs(exported.module()(x, hx), new(x, hx))
    x2 = randn(2, 5, 3, device=device, seed=9)
    assert_same_outputs(exported.module()(x2, hx), new(x2, hx))


def test_export_dynamic_batch_and_length(device):
    _, new = make_pair(3, 4, 2, device=device)
    x = randn(5, 2, 3, device=device)
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    exported = torch.export.export(new, (x,), dynamic_shapes=({0: length, 1: batch},))
    for shape in [(5, 2, 3), (7, 3, 3), (2, 6, 3)]:
        xs = randn(*shape, device=device, seed=sum(shape))
        assert_same_outputs(exported.module()(xs), new(xs))


def test_export_cell(device):
    cell = rnnfast.RNNCell(3, 4).to(device=device, dtype=torch.float64)
    x = randn(2, 3, device=device)
    exported = torch.export.export(cell, (x,))
    torch.testing.assert_close(exported.module()(x), cell(x), atol=0, rtol=0)


# --------------------------------------------------------------------------- torch.compile


def _grads(outputs, inputs):
    tensors = [o.data if isinstance(o, PackedSequence) else o for o in outputs]
    return torch.autograd.grad(sum(t.sin().sum() for t in tensors), inputs)


@pytest.mark.parametrize("batch_first", [False, True])
def test_compile_fullgraph_dense(device, batch_first):
    _, new = make_pair(3, 4, 2, bidirectional=True, batch_first=batch_first, device=device)
    compiled = torch.compile(new, fullgraph=True, backend="aot_eager")
    for seed in (1, 2):  # a second call reuses the graph
        x = randn(2, 5, 3, device=device, seed=seed).requires_grad_()
        eager = new(x)
        out = compiled(x)
        assert out[0].stride() == eager[0].stride()
        assert_same_outputs(out, eager)
        inputs = [x, *new.parameters()]
        assert_same_outputs(_grads(out, inputs), _grads(eager, inputs))


@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["hx_none", "hx"])
def test_compile_fullgraph_packed(device, enforce_sorted, with_hx):
    _, new = make_pair(3, 4, 2, bidirectional=True, device=device)
    compiled = torch.compile(new, fullgraph=True, backend="aot_eager")
    lengths = [5, 4, 2] if enforce_sorted else [2, 5, 4]
    gen = torch.Generator().manual_seed(3)
    seqs = [torch.randn(n, 3, generator=gen, dtype=torch.float64).to(device) for n in lengths]
    packed = pack_sequence(seqs, enforce_sorted=enforce_sorted)
    packed.data.requires_grad_()
    args = (packed, randn(4, 3, 4, device=device, seed=4)) if with_hx else (packed,)
    eager = new(*args)
    out = compiled(*args)
    assert isinstance(out[0], PackedSequence)
    assert out[0].batch_sizes is packed.batch_sizes
    assert_same_outputs((out[0].data, out[1]), (eager[0].data, eager[1]))
    inputs = [packed.data, *new.parameters()]
    assert_same_outputs(_grads(out, inputs), _grads(eager, inputs))


def test_compile_fullgraph_cell_loop(device):
    cell = rnnfast.RNNCell(3, 4, nonlinearity="relu").to(device=device, dtype=torch.float64)

    def unroll(x):
        h = None
        for t in range(x.shape[0]):
            h = cell(x[t], h)
        return h

    compiled = torch.compile(unroll, fullgraph=True, backend="aot_eager")
    x = randn(4, 2, 3, device=device).requires_grad_()
    h_c, h_e = compiled(x), unroll(x)
    torch.testing.assert_close(h_c, h_e, **F64)
    assert_same_outputs(_grads([h_c], [x, *cell.parameters()]),
                        _grads([h_e], [x, *cell.parameters()]))


# ------------------------------------------------------------- LSTM, GRU and their cells
# The same transformations on rnnfast.LSTM (with and without proj_size), rnnfast.GRU,
# rnnfast.LSTMCell and rnnfast.GRUCell, each against the torch.nn module it replaces
# (tests/cells.py builds the pair with bitwise-equal parameters).

GATED_ALL = GATED + GATED_STEP


def gated_pair(name, device, dtype=torch.float64):
    """(torch module, rnnfast module) of cell `name`: sequence modules 2-layer
    bidirectional with I=3, H=4 (>= 3, as lstm_proj's proj_size 2 needs); cells I=3, H=4."""
    args = (3, 4) if name in GATED_STEP else (3, 4, 2)
    kwargs = {} if name in GATED_STEP else dict(bidirectional=True)
    return make_cell_pair(name, *args, device=device, dtype=dtype, **kwargs)


def gated_input(module, device, dtype=torch.float64, seed=1):
    """(x, hx) of a sequence module (L=5, N=2) or a cell (N=2), with hx given."""
    gen = torch.Generator().manual_seed(seed)
    draw = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64).to(  # noqa: E731
        device, dtype)
    if isinstance(module, nn.RNNCellBase):
        h = draw(2, module.hidden_size)
        return draw(2, 3), ((h, draw(2, module.hidden_size)) if is_lstm_cell(module) else h)
    D = 2 if module.bidirectional else 1
    h0 = draw(module.num_layers * D, 2, state_width(module))
    hx = (h0, draw(module.num_layers * D, 2, module.hidden_size)) if module.mode == "LSTM" \
        else h0
    return draw(5, 2, 3), hx


def is_lstm_cell(module):
    return isinstance(module, (nn.LSTMCell, rnnfast.LSTMCell))


def assert_live_flat_weights_if_sequence(module):
    if isinstance(module, nn.RNNBase):
        assert_live_flat_weights(module)


@pytest.mark.parametrize("name", GATED_ALL)
def test_gated_deepcopy_and_torch_save_load(device, name):
    ref, new = gated_pair(name, device)
    x, hx = gated_input(new, device)
    expected = result_tensors(new(x, hx))
    assert_same_outputs(expected, result_tensors(ref(x, hx)))
    clone = copy.deepcopy(new)
    assert type(clone) is type(new) and repr(clone) == repr(new)
    assert_same_outputs(result_tensors(clone(x, hx)), expected, dict(atol=0, rtol=0))
    assert_live_flat_weights_if_sequence(clone)
    assert not any(a is b for a, b in zip(clone.parameters(), new.parameters()))
    with torch.no_grad():
        next(clone.parameters()).mul_(2)  # weight_ih(_l0): the copy is independent
    assert not torch.equal(result_tensors(clone(x, hx))[0], expected[0])
    assert_same_outputs(result_tensors(new(x, hx)), expected, dict(atol=0, rtol=0))
    # The whole module through torch.save / torch.load.
    buffer = io.BytesIO()
    torch.save(new, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is type(new) and repr(loaded) == repr(new)
    assert_live_flat_weights_if_sequence(loaded)
    assert_same_outputs(result_tensors(loaded(x, hx)), expected, dict(atol=0, rtol=0))
    # The state_dict through torch.save(weights_only=True) into scrambled parameters.
    fresh = state_dict_round_trip(new)
    assert_same_outputs(result_tensors(fresh(x, hx)), expected, dict(atol=0, rtol=0))


@pytest.mark.parametrize("name", GATED_ALL)
def test_gated_functional_call_uses_the_given_tensors_then_reverts(device, name):
    ref, new = gated_pair(name, device)
    x, _ = gated_input(new, device)
    before = result_tensors(new(x))
    other = {n: randn(*p.shape, device=device, seed=i + 10).mul_(0.5).requires_grad_()
             for i, (n, p) in enumerate(new.named_parameters())}
    out = result_tensors(torch.func.functional_call(new, other, (x,)))
    expected = result_tensors(torch.func.functional_call(ref, other, (x,)))
    assert_same_outputs(out, expected)
    grads = torch.autograd.grad(sum(t.sum() for t in out), list(other.values()))
    grads_ref = torch.autograd.grad(sum(t.sum() for t in expected), list(other.values()))
    assert_same_outputs(grads, grads_ref)
    # All-zero weights and a zero initial state: every gate input is 0, so g (LSTM) / n
    # (GRU) is tanh(0) = 0 and every state stays 0.
    zeros = {n: torch.zeros_like(p) for n, p in new.named_parameters()}
    assert all(t.abs().max() == 0
               for t in result_tensors(torch.func.functional_call(new, zeros, (x,))))
    assert_same_outputs(result_tensors(new(x)), before)  # back to its own parameters
    assert_live_flat_weights_if_sequence(new)


@pytest.mark.parametrize("name", GATED_ALL)
def test_gated_weight_norm_parametrization(device, name):
    ref, new = gated_pair(name, device)
    if name in GATED_STEP:
        targets = ["weight_hh", "weight_ih"]
    else:
        targets = ["weight_hh_l0", "weight_ih_l1"] + (["weight_hr_l0"] if name == "lstm_proj"
                                                      else [])
    for m in (ref, new):
        for target in targets:
            nn.utils.parametrizations.weight_norm(m, target)
    new.load_state_dict(ref.state_dict())
    x, hx = gated_input(new, device)
    out_r, out_n = result_tensors(ref(x, hx)), result_tensors(new(x, hx))
    assert_same_outputs(out_n, out_r)
    originals = lambda m: [p for n, p in m.named_parameters() if "original" in n]  # noqa: E731
    g_r = torch.autograd.grad(sum(t.sum() for t in out_r), originals(ref))
    g_n = torch.autograd.grad(sum(t.sum() for t in out_n), originals(new))
    assert len(g_n) == 2 * len(targets)
    assert_same_outputs(g_n, g_r)
    # Changing the magnitude parameter changes the output (the parametrization is live).
    with torch.no_grad():
        getattr(new.parametrizations, targets[0]).original0.mul_(3)
    assert not torch.allclose(result_tensors(new(x, hx))[0], out_n[0])


@pytest.mark.parametrize("name", GATED_ALL)
def test_gated_to_dtype_and_double(device, name):
    ref, new = gated_pair(name, device, dtype=torch.float32)
    x, hx = gated_input(new, device)
    for convert in (lambda m: m.double(), lambda m: m.to(torch.float64),
                    lambda m: m.to(device=device, dtype=torch.float64)):
        r, n = convert(copy.deepcopy(ref)), convert(copy.deepcopy(new))
        assert all(p.dtype == torch.float64 for p in n.parameters())
        assert_live_flat_weights_if_sequence(n)
        out = result_tensors(n(x, hx))
        assert all(t.dtype == torch.float64 for t in out)
        assert_same_outputs(out, result_tensors(r(x, hx)))
    back = copy.deepcopy(new).double().float()
    x32, hx32 = x.float(), map_states(lambda t: t.float(), hx)
    assert_same_outputs(result_tensors(back(x32, hx32)), result_tensors(new(x32, hx32)),
                        dict(atol=0, rtol=0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", GATED_ALL)
def test_gated_half_and_bfloat16(device, name, dtype):
    # Tolerance: the error of the low-precision result against float64 math on the same
    # (rounded) weights, input and state.
    _, new = gated_pair(name, device, dtype=torch.float32)
    new = new.half() if dtype == torch.float16 else new.bfloat16()
    assert all(p.dtype == dtype for p in new.parameters())
    assert_live_flat_weights_if_sequence(new)
    x, hx = gated_input(new, device, dtype=dtype)
    out = result_tensors(new(x, hx))
    assert all(t.dtype == dtype for t in out)
    exact = copy.deepcopy(new).double()
    out64 = result_tensors(exact(x.double(), map_states(lambda t: t.double(), hx)))
    tol = 4e-3 if dtype == torch.float16 else 3e-2
    for a, e in zip(out, out64, strict=True):
        torch.testing.assert_close(a.double(), e, atol=tol, rtol=0)
    sum(t.float().sum() for t in out).backward()
    assert all(p.grad is not None and p.grad.dtype == dtype for p in new.parameters())
