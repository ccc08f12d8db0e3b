"""torch's own ModuleInfo samples for nn.RNN / LSTM / GRU and their cells, run on rnnfast.

torch.testing._internal.common_modules.module_db describes, for every torch.nn module,
sample constructor + forward inputs (with a reference function) and error inputs.
Specification, for every sample of nn.RNN, nn.LSTM, nn.GRU, nn.RNNCell, nn.LSTMCell and
nn.GRUCell (packed samples included; LSTM's are with and without projections):
  * rnnfast's class built with the same constructor arguments under the same seed has
    bitwise-equal parameters, and its forward output equals the torch class's (train
    and eval mode) and the sample's reference function (the unbatched reference);
  * gradcheck in float64 passes with torch's test defaults (check_batched_grad=True,
    fast mode), which needs the ops' vmap rules; gradgradcheck too;
  * every error input raises the same exception type, matching torch's regex, and with
    exactly torch's message.
"""

from __future__ import annotations

import copy
import sys
import types
import unittest

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

import rnnfast
from conftest import DEVICES

try:
    import expecttest  # noqa: F401  (common_utils imports it)
except ImportError:  # a minimal stand-in is enough for importing the module database
    _stub = types.ModuleType("expecttest")
    _stub.TestCase = unittest.TestCase
    sys.modules["expecttest"] = _stub

_flags_were_frozen = torch.backends.flags_frozen()
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db  # noqa: E402
from torch.testing._internal.common_utils import (  # noqa: E402
    freeze_rng_state,
    gradcheck,
    gradgradcheck,
)

# Importing common_utils calls torch.backends.disable_global_flags(); undo that so the
# rest of the test session may still set backend flags directly.
if not _flags_were_frozen:
    torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
    assert not torch.backends.flags_frozen()

RNNFAST_OF = {
    nn.RNN: rnnfast.RNN, nn.LSTM: rnnfast.LSTM, nn.GRU: rnnfast.GRU,
    nn.RNNCell: rnnfast.RNNCell, nn.LSTMCell: rnnfast.LSTMCell, nn.GRUCell: rnnfast.GRUCell,
}
INFO = {info.module_cls: info for info in module_db if info.module_cls in RNNFAST_OF}
assert set(INFO) == set(RNNFAST_OF), "module_db lost one of its recurrent module entries"


def samples(torch_cls, device="cpu", training=True, seed=0):
    torch.manual_seed(seed)  # the samples draw their inputs from the global generator
    info = INFO[torch_cls]
    return info.module_inputs_func(info, device=device, dtype=torch.float64,
                                   requires_grad=True, training=training,
                                   with_packed_sequence=True)


def error_samples(torch_cls):
    info = INFO[torch_cls]
    return info.module_error_inputs_func(info, device="cpu", dtype=torch.float32,
                                         requires_grad=False, training=True)


def sample_id(sample):
    ctor = sample.constructor_input
    fwd = sample.forward_input
    parts = [str(a) for a in ctor.args] + [f"{k}={v}" for k, v in ctor.kwargs.items()]

    def kind(a):
        if isinstance(a, PackedSequence):
            return "packed"
        if isinstance(a, (tuple, list)):  # LSTM's (h, c)
            return "+".join(kind(t) for t in a)
        return "x".join(map(str, a.shape))

    return ",".join(parts) + "|" + ",".join(kind(a) for a in fwd.args)


def _devices(cls):
    """(device, marks) pairs a class's samples run on: every device of conftest.DEVICES."""
    for d in DEVICES:
        yield (d, ()) if isinstance(d, str) else (d.values[0], d.marks)


SAMPLE_PARAMS = [
    pytest.param(device, cls, i, marks=marks, id=f"{device}-{cls.__name__}[{i}]:{sample_id(s)}")
    for cls in RNNFAST_OF for device, marks in _devices(cls) for i, s in enumerate(samples(cls))
]
ERROR_PARAMS = [
    pytest.param(cls, i, id=f"{cls.__name__}[{i}]:{e.error_type.__name__}:{e.error_regex[:40]}")
    for cls in RNNFAST_OF for i, e in enumerate(error_samples(cls))
]


def build_pair(torch_cls, sample, device, training):
    ctor = sample.constructor_input
    torch.manual_seed(0)
    ref = torch_cls(*ctor.args, **ctor.kwargs).to(device=device, dtype=torch.float64)
    torch.manual_seed(0)
    new = RNNFAST_OF[torch_cls](*ctor.args, **ctor.kwargs).to(device=device, dtype=torch.float64)
    for (n_r, p_r), (n_n, p_n) in zip(ref.named_parameters(), new.named_parameters(),
                                      strict=True):
        assert n_r == n_n and torch.equal(p_r, p_n), n_r
    return ref.train(training), new.train(training)


def flat_outputs(out):
    if isinstance(out, PackedSequence):
        return [out.data]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flat_outputs(o)]
    return [out]


def leaves(args):
    """The differentiable tensors of forward args (a PackedSequence contributes .data,
    an (h, c) state tuple both tensors)."""
    out = []
    for a in args:
        if isinstance(a, PackedSequence):
            out.append(a.data)
        elif isinstance(a, (tuple, list)):
            out.extend(a)
        else:
            out.append(a)
    return out


def rebuild(args, tensors):
    """forward args with their differentiable tensors replaced by `tensors` (in the
    order of leaves(args))."""
    tensors = list(tensors)
    out = []
    for a in args:
        if isinstance(a, PackedSequence):
            out.append(PackedSequence(tensors.pop(0), a.batch_sizes, a.sorted_indices,
                                      a.unsorted_indices))
        elif isinstance(a, (tuple, list)):
            out.append(type(a)(tensors.pop(0) for _ in a))
        else:
            out.append(tensors.pop(0))
    assert not tensors
    return out


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("device,torch_cls,index", SAMPLE_PARAMS)
def test_sample_forward_matches_torch(device, torch_cls, index, training):
    sample = samples(torch_cls, device, training)[index]
    ref, new = build_pair(torch_cls, sample, device, training)
    args, kwargs = sample.forward_input.args, sample.forward_input.kwargs
    with freeze_rng_state():
        expected = flat_outputs(ref(*copy.deepcopy(args), **kwargs))
    with freeze_rng_state():
        actual = flat_outputs(new(*copy.deepcopy(args), **kwargs))
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape and a.dtype == e.dtype
        torch.testing.assert_close(a, e, atol=1e-12, rtol=0)
    # (The reference function is the unbatched-input one; it does not take packed input.)
    if sample.reference_fn is not None and not any(isinstance(a, PackedSequence) for a in args):
        reference = flat_outputs(sample.reference_fn(new, *args, **kwargs))
        for a, r in zip(actual, reference, strict=True):
            torch.testing.assert_close(a, r, atol=1e-12, rtol=0)


def _check_gradients(torch_cls, index, device, second_order):
    sample = samples(torch_cls, device)[index]
    _, new = build_pair(torch_cls, sample, device, training=True)
    args, kwargs = sample.forward_input.args, sample.forward_input.kwargs
    inputs = [t.detach().requires_grad_() for t in leaves(args)]
    names = [n for n, _ in new.named_parameters()]
    params = [p.detach().requires_grad_() for p in new.parameters()]

    def fn(*tensors):
        x, p = tensors[: len(inputs)], tensors[len(inputs) :]
        out = torch.func.functional_call(new, dict(zip(names, p)), tuple(rebuild(args, x)), kwargs)
        return tuple(flat_outputs(out))

    check = gradgradcheck if second_order else gradcheck
    assert check(fn, (*inputs, *params))  # check_batched_grad=True, fast_mode=True


@pytest.mark.parametrize("device,torch_cls,index", SAMPLE_PARAMS)
def test_sample_gradcheck(device, torch_cls, index):
    _check_gradients(torch_cls, index, device, second_order=False)


# Second order costs seconds per sample: a subset that still covers every option value.
# nn.GRU (options bias, batch_first, bidirectional; 4 samples per combination: no hx, hx,
# packed 2 sequences, packed 5 sequences): the combinations FFF, FTT, TFT, TTF (each pair
# of values of two options occurs), with hx, packed-2, hx, packed-5.
# nn.LSTM (bias, batch_first, bidirectional, proj_size; 2 samples each: no hx, hx): the
# combinations FFFF, FTTT, TFTT, TTFF (each value of each option twice), with and
# without hx.
GRADGRAD_INDICES = {nn.GRU: {1, 14, 21, 27}, nn.LSTM: {0, 15, 22, 25}}


def _gradgrad_subset(cls, k):
    """Whether sample k of class cls runs gradgradcheck: every cell sample; for nn.RNN,
    for each option combination (nonlinearity, bias, batch_first, bidirectional; the 4
    samples above) one sample, cycling through hx, packed-2, hx, packed-5; for nn.GRU
    and nn.LSTM the samples of GRADGRAD_INDICES."""
    if cls is nn.RNN:
        return k % 4 == (1, 2, 1, 3)[(k // 4) % 4]
    if cls in GRADGRAD_INDICES:
        return k in GRADGRAD_INDICES[cls]
    return True


GRADGRAD_PARAMS = [p for p in SAMPLE_PARAMS
                   if _gradgrad_subset(p.values[1], p.values[2])]


@pytest.mark.parametrize("device,torch_cls,index", GRADGRAD_PARAMS)
def test_sample_gradgradcheck(device, torch_cls, index):
    _check_gradients(torch_cls, index, device, second_order=True)


@pytest.mark.parametrize("torch_cls,index", ERROR_PARAMS)
def test_error_input(torch_cls, index):
    error = error_samples(torch_cls)[index]
    module_input = error.module_error_input
    messages = []
    for cls in (torch_cls, RNNFAST_OF[torch_cls]):  # torch first: the case is a real error
        ctor = module_input.constructor_input
        with pytest.raises(error.error_type, match=error.error_regex) as info:
            if error.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
                cls(*ctor.args, **ctor.kwargs)
            else:
                module = cls(*ctor.args, **ctor.kwargs)
                fwd = module_input.forward_input
                module(*fwd.args, **fwd.kwargs)
        messages.append(str(info.value))
    assert messages[1] == messages[0]
