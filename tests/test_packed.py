"""PackedSequence input to rnnfast.RNN: the fused kernels consume batch_sizes directly.

Specification (nn.RNN's behaviour, compat §3.4):
  * the output is a PackedSequence holding the input's own batch_sizes,
    sorted_indices and unsorted_indices objects;
  * h_n holds each sequence's state at its true last step (forward direction) and at
    t = 0 (reverse direction), in the caller's original batch order;
  * a given hx is in original batch order and is permuted like torch does;
  * forward and backward (data, hx, every parameter) equal nn.RNN's with the same
    weights; padded positions get zero gradient;
  * batch_first is ignored for packed input; training-mode dropout draws the same
    masks as nn.RNN under the same seed.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import (
    PackedSequence,
    pack_padded_sequence,
    pack_sequence,
    pad_packed_sequence,
)

import rnnfast

F64 = dict(atol=1e-10, rtol=0)


def make_pair(*args, seed=0, device="cpu", dtype=torch.float64, **kwargs):
    """nn.RNN and rnnfast.RNN with identical parameters (state_dict copy)."""
    torch.manual_seed(seed)
    ref = nn.RNN(*args, device=device, dtype=dtype, **kwargs)
    new = rnnfast.RNN(*args, device=device, dtype=dtype, **kwargs)
    new.load_state_dict(ref.state_dict())
    return ref, new


def packed_batch(lengths, input_size, *, enforce_sorted, device, dtype=torch.float64, seed=1):
    """A PackedSequence of fresh random sequences of the given lengths (data a leaf)."""
    gen = torch.Generator().manual_seed(seed)
    seqs = [torch.randn(n, input_size, generator=gen, dtype=dtype).to(device) for n in lengths]
    packed = pack_sequence(seqs, enforce_sorted=enforce_sorted)
    packed.data.requires_grad_()
    return packed, seqs


def rand_like_hidden(module, batch, device, dtype=torch.float64, seed=2):
    D = 2 if module.bidirectional else 1
    gen = torch.Generator().manual_seed(seed)
    shape = (module.num_layers * D, batch, module.hidden_size)
    return torch.randn(shape, generator=gen, dtype=dtype).to(device).requires_grad_()


def run_and_grad(module, packed, hx, seed=3):
    """Forward, then backward of a random linear functional of (output.data, h_n)."""
    out, h_n = module(packed) if hx is None else module(packed, hx)
    gen = torch.Generator().manual_seed(seed)
    go = torch.randn(out.data.shape, generator=gen, dtype=out.data.dtype).to(out.data.device)
    gh = torch.randn(h_n.shape, generator=gen, dtype=h_n.dtype).to(h_n.device)
    wrt = [packed.data] + ([hx] if hx is not None else []) + list(module.parameters())
    grads = torch.autograd.grad((out.data, h_n), wrt, (go, gh))
    return out, h_n, grads


LENGTHS_UNSORTED = [3, 6, 1, 6, 4]  # ties, a length-1 sequence, not sorted


@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["hx_none", "hx"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("nonlinearity,bias", [("tanh", True), ("relu", False)])
def test_packed_forward_backward_matches_nn_rnn(
    device, enforce_sorted, with_hx, bidirectional, num_layers, nonlinearity, bias
):
    lengths = sorted(LENGTHS_UNSORTED, reverse=True) if enforce_sorted else LENGTHS_UNSORTED
    ref, new = make_pair(3, 4, num_layers, nonlinearity=nonlinearity, bias=bias,
                         bidirectional=bidirectional, device=device)
    packed_ref, _ = packed_batch(lengths, 3, enforce_sorted=enforce_sorted, device=device)
    packed_new, _ = packed_batch(lengths, 3, enforce_sorted=enforce_sorted, device=device)
    hx_ref = rand_like_hidden(ref, len(lengths), device) if with_hx else None
    hx_new = rand_like_hidden(new, len(lengths), device) if with_hx else None

    out_r, h_r, g_r = run_and_grad(ref, packed_ref, hx_ref)
    out_n, h_n, g_n = run_and_grad(new, packed_new, hx_new)

    assert isinstance(out_n, PackedSequence)
    torch.testing.assert_close(out_n.data, out_r.data, **F64)
    torch.testing.assert_close(h_n, h_r, **F64)
    for a, b in zip(g_n, g_r):
        torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
def test_output_reuses_the_input_packing_tensors(device, enforce_sorted):
    _, new = make_pair(3, 4, device=device)
    packed, _ = packed_batch([5, 4, 2], 3, enforce_sorted=enforce_sorted, device=device)
    out, _ = new(packed)
    assert out.batch_sizes is packed.batch_sizes
    assert out.sorted_indices is packed.sorted_indices
    assert out.unsorted_indices is packed.unsorted_indices
    assert out.data.shape == (packed.data.shape[0], 4)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_h_n_is_each_sequence_at_its_true_last_step_in_original_order(device, bidirectional):
    # Oracle independent of nn.RNN: every sequence run alone as a dense batch of one.
    _, new = make_pair(3, 5, 2, bidirectional=bidirectional, device=device)
    lengths = [2, 7, 4, 7, 1]
    packed, seqs = packed_batch(lengths, 3, enforce_sorted=False, device=device)
    hx = rand_like_hidden(new, len(lengths), device).detach()
    out, h_n = new(packed, hx)
    padded, out_lengths = pad_packed_sequence(out)  # (T, N, D*H), original order
    assert out_lengths.tolist() == lengths
    for i, seq in enumerate(seqs):
        o_i, h_i = new(seq.unsqueeze(1), hx[:, i : i + 1].contiguous())
        torch.testing.assert_close(padded[: lengths[i], i], o_i[:, 0], **F64)
        torch.testing.assert_close(h_n[:, i], h_i[:, 0], **F64)
        assert padded[lengths[i] :, i].abs().sum() == 0  # pad positions stay zero


def test_padded_positions_get_zero_gradient(device):
    ref, new = make_pair(3, 4, 2, bidirectional=True, device=device)
    lengths = torch.tensor([5, 3, 1])
    padded = torch.randn(5, 3, 3, dtype=torch.float64, device=device)
    grads = []
    for module in (ref, new):
        x = padded.clone().requires_grad_()
        out, h_n = module(pack_padded_sequence(x, lengths))
        unpacked, _ = pad_packed_sequence(out)
        (unpacked.pow(2).sum() + h_n.sin().sum()).backward()
        grads.append(x.grad)
    g_ref, g_new = grads
    torch.testing.assert_close(g_new, g_ref, **F64)
    for i, n in enumerate(lengths.tolist()):
        assert g_new[n:, i].abs().sum() == 0
        assert g_new[:n, i].abs().sum() > 0


def test_batch_first_is_ignored_for_packed_input(device):
    ref, new = make_pair(3, 4, batch_first=True, bidirectional=True, device=device)
    x = torch.randn(3, 6, 3, dtype=torch.float64, device=device)  # (N, T, H_in)
    packed = pack_padded_sequence(x, torch.tensor([4, 6, 2]), batch_first=True,
                                  enforce_sorted=False)
    out_r, h_r = ref(packed)
    out_n, h_n = new(packed)
    torch.testing.assert_close(out_n.data, out_r.data, **F64)
    torch.testing.assert_close(h_n, h_r, **F64)
    # Unpacking batch-first gives (N, T, D*H), as for nn.RNN.
    assert pad_packed_sequence(out_n, batch_first=True)[0].shape == (3, 6, 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_packed_dtypes(device, dtype):
    ref, new = make_pair(4, 6, 2, bidirectional=True, device=device, dtype=dtype)
    packed, _ = packed_batch([3, 5, 5, 2], 4, enforce_sorted=False, device=device, dtype=dtype)
    out_r, h_r = ref(packed)
    out_n, h_n = new(packed)
    tol = F64 if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)
    assert out_n.data.dtype == dtype and h_n.dtype == dtype
    torch.testing.assert_close(out_n.data, out_r.data, **tol)
    torch.testing.assert_close(h_n, h_r, **tol)


def test_single_sequence_and_single_step(device):
    ref, new = make_pair(2, 3, 2, bidirectional=True, device=device)
    for lengths in ([1], [4], [1, 1, 1]):
        packed, _ = packed_batch(lengths, 2, enforce_sorted=False, device=device)
        out_r, h_r = ref(packed)
        out_n, h_n = new(packed)
        torch.testing.assert_close(out_n.data, out_r.data, **F64)
        torch.testing.assert_close(h_n, h_r, **F64)


@pytest.mark.parametrize("p", [0.3, 1.0])
def test_train_mode_dropout_matches_nn_rnn_under_the_same_seed(device, p):
    ref, new = make_pair(3, 4, 3, dropout=p, bidirectional=True, device=device)
    packed, _ = packed_batch([4, 2, 5], 3, enforce_sorted=False, device=device)
    torch.manual_seed(123)
    out_r, h_r = ref(packed)
    torch.manual_seed(123)
    out_n, h_n = new(packed)
    torch.testing.assert_close(out_n.data, out_r.data, **F64)
    torch.testing.assert_close(h_n, h_r, **F64)
    new.eval()
    ref.eval()
    torch.testing.assert_close(new(packed)[0].data, ref(packed)[0].data, **F64)


def test_hx_is_not_mutated_and_gets_gradient(device):
    _, new = make_pair(3, 4, 2, device=device)
    packed, _ = packed_batch([3, 1, 2], 3, enforce_sorted=False, device=device)
    hx = rand_like_hidden(new, 3, device)
    before = hx.detach().clone()
    out, h_n = new(packed, hx)
    (out.data.sum() + h_n.sum()).backward()
    assert torch.equal(hx.detach(), before)
    assert hx.grad is not None and hx.grad.shape == hx.shape and hx.grad.abs().sum() > 0


def _error(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the exception itself is what is compared
        return type(e), str(e)
    return None


@pytest.mark.parametrize(
    "case", ["hx_batch_sorted", "hx_batch_unsorted", "hx_2d", "data_3d", "input_size"]
)
def test_packed_errors_match_nn_rnn(case):
    ref, new = make_pair(3, 4, 2)
    sorted_pack, _ = packed_batch([4, 3, 1], 3, enforce_sorted=True, device="cpu")
    unsorted_pack, _ = packed_batch([1, 4, 3], 3, enforce_sorted=False, device="cpu")
    bad_size, _ = packed_batch([4, 3, 1], 5, enforce_sorted=True, device="cpu")
    hx_wrong_batch = torch.randn(2, 2, 4, dtype=torch.float64)
    calls = {
        "hx_batch_sorted": lambda m: m(sorted_pack, hx_wrong_batch),
        "hx_batch_unsorted": lambda m: m(unsorted_pack, hx_wrong_batch),
        "hx_2d": lambda m: m(sorted_pack, torch.randn(2, 4, dtype=torch.float64)),
        "data_3d": lambda m: m(
            PackedSequence(torch.randn(8, 1, 3, dtype=torch.float64), sorted_pack.batch_sizes)
        ),
        "input_size": lambda m: m(bad_size),
    }
    expected = _error(lambda: calls[case](ref))
    assert expected is not None
    assert _error(lambda: calls[case](new)) == expected


def test_all_lengths_permutations_small(device):
    # Every ordering of a small set of lengths (ties included) against nn.RNN.
    ref, new = make_pair(2, 3, 1, bidirectional=True, device=device)
    for lengths in set(itertools.permutations([3, 1, 3, 2])):
        packed, _ = packed_batch(list(lengths), 2, enforce_sorted=False, device=device)
        hx = rand_like_hidden(ref, 4, device).detach()
        out_r, h_r = ref(packed, hx)
        out_n, h_n = new(packed, hx)
        torch.testing.assert_close(out_n.data, out_r.data, **F64)
        torch.testing.assert_close(h_n, h_r, **F64)
