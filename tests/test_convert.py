"""rnnfast.convert(model) / rnnfast.to_torch(model): swap the RNN modules of a model.

Specification:
  * convert replaces every module whose class is exactly torch.nn.RNN / nn.RNNCell
    (at any depth, in any container, the root included) by rnnfast.RNN / RNNCell;
    to_torch does the reverse. Both return the model, or the new root.
  * The new module takes over the old one's state: the same Parameter objects,
    device, dtype, training mode, attributes and hooks; nothing is re-initialised and
    no random numbers are drawn. The converted model computes the same outputs and
    gradients, and an optimizer built before the conversion keeps working.
  * Shared modules stay shared; subclasses of nn.RNN are left alone; a module with a
    parametrization (weight_norm) is converted with its parametrization.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnfast


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.RNN(3, 5, 2, batch_first=True, bidirectional=True)
        self.cell = nn.RNNCell(10, 6, nonlinearity="relu")
        self.blocks = nn.ModuleList([nn.Linear(6, 6), nn.Sequential(nn.RNNCell(6, 6, bias=False))])
        self.heads = nn.ModuleDict({"rnn": nn.RNN(6, 4, nonlinearity="relu", dropout=0.0)})
        self.shared = self.cell  # the same module under two names

    def forward(self, x):
        out, h_n = self.encoder(x)  # (N, L, 10)
        h = None
        for t in range(out.shape[1]):
            h = self.cell(out[:, t], h)
        h = self.blocks[1][0](self.blocks[0](h))
        y, _ = self.heads["rnn"](h.unsqueeze(0))
        return y.sum(0) + h_n.sum(0).sum(-1, keepdim=True) + self.shared(out[:, 0]).mean()


def rnn_types(model):
    return sorted(type(m).__module__ + "." + type(m).__name__ for m in model.modules()
                  if isinstance(m, (nn.RNNBase, nn.RNNCellBase)))


def make_model(device="cpu", dtype=torch.float64):
    torch.manual_seed(0)
    return Model().to(device=device, dtype=dtype)


def test_convert_replaces_every_rnn_and_cell_and_keeps_outputs(device):
    model = make_model(device)
    x = torch.randn(2, 4, 3, dtype=torch.float64, device=device)
    expected = model(x)
    params_before = list(model.parameters())

    converted = rnnfast.convert(model)

    assert converted is model
    assert rnn_types(model) == sorted(
        ["rnnfast.modules.RNN"] * 2 + ["rnnfast.modules.RNNCell"] * 2  # shared counted once
    )
    assert model.shared is model.cell  # still one module
    params_after = list(model.parameters())
    assert len(params_after) == len(params_before)
    assert all(a is b for a, b in zip(params_after, params_before))
    assert all(p.device.type == device and p.dtype == torch.float64 for p in params_after)
    torch.testing.assert_close(model(x), expected, atol=1e-12, rtol=0)


def test_convert_keeps_gradients_and_the_optimizer(device):
    ref = make_model(device)
    model = make_model(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # built before the conversion
    model = rnnfast.convert(model)
    x = torch.randn(3, 5, 3, dtype=torch.float64, device=device)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(2):
        for m, o in ((ref, ref_opt), (model, opt)):
            o.zero_grad()
            m(x).pow(2).sum().backward()
            o.step()
    for (n_r, p_r), (n_m, p_m) in zip(ref.named_parameters(), model.named_parameters(),
                                      strict=True):
        assert n_r == n_m
        torch.testing.assert_close(p_m, p_r, atol=1e-12, rtol=0)
    assert not torch.equal(p_m, make_model(device).state_dict()[n_m])  # training happened


def test_convert_keeps_attributes_training_mode_and_state_dict():
    model = make_model()
    model.encoder.eval()
    sd_before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    rnnfast.convert(model)
    assert torch.equal(torch.get_rng_state(), rng_before)  # no re-initialisation
    assert model.training and not model.encoder.training and model.cell.training
    enc = model.encoder
    assert (enc.input_size, enc.hidden_size, enc.num_layers, enc.batch_first, enc.bidirectional,
            enc.mode, enc.nonlinearity) == (3, 5, 2, True, True, "RNN_TANH", "tanh")
    assert model.heads["rnn"].mode == "RNN_RELU"
    assert model.cell.nonlinearity == "relu" and model.blocks[1][0].bias is False
    assert list(model.state_dict()) == list(sd_before)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd_before[k])
    # The converted modules' flat weights are their own live parameters.
    assert all(a is b for a, b in zip(enc._flat_weights, enc.parameters()))


def test_convert_the_root_module_returns_the_new_root(device):
    for make in (lambda: nn.RNN(3, 4, 2, bidirectional=True), lambda: nn.RNNCell(3, 4)):
        torch.manual_seed(0)
        root = make().to(device=device, dtype=torch.float64)
        x = torch.randn(5, 2, 3, dtype=torch.float64, device=device)
        x = x if isinstance(root, nn.RNN) else x[0]
        expected = root(x)
        new = rnnfast.convert(root)
        assert new is not root and type(new).__module__ == "rnnfast.modules"
        assert type(root).__module__ == "torch.nn.modules.rnn"  # the original is untouched
        assert all(a is b for a, b in zip(new.parameters(), root.parameters()))
        torch.testing.assert_close(new(x), expected, atol=1e-12, rtol=0)


def test_to_torch_round_trip(device):
    model = make_model(device)
    x = torch.randn(2, 4, 3, dtype=torch.float64, device=device)
    expected = model(x)
    params = list(model.parameters())
    model = rnnfast.to_torch(rnnfast.convert(model))
    assert rnn_types(model) == sorted(
        ["torch.nn.modules.rnn.RNN"] * 2 + ["torch.nn.modules.rnn.RNNCell"] * 2
    )
    assert all(a is b for a, b in zip(model.parameters(), params))
    torch.testing.assert_close(model(x), expected, atol=1e-12, rtol=0)
    root = rnnfast.to_torch(rnnfast.RNN(3, 4))
    assert type(root) is nn.RNN


@pytest.mark.filterwarnings("ignore:The tensor attributes .*_flat_weights")
def test_to_torch_gives_an_exportable_model_without_rnnfast_ops():
    torch.manual_seed(0)
    model = nn.Sequential(rnnfast.RNN(3, 4, 2))
    x = torch.randn(5, 2, 3)
    exported = torch.export.export(rnnfast.to_torch(model), (x,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert not any("rnnfast" in t for t in targets)
    assert any("rnn_tanh" in t for t in targets)
    torch.testing.assert_close(exported.module()(x)[0], model(x)[0], atol=1e-6, rtol=1e-6)


def test_subclasses_and_other_modules_are_left_alone():
    class MyRNN(nn.RNN):
        pass

    class MyLSTM(nn.LSTM):
        pass

    model = nn.Sequential(MyRNN(3, 4), MyLSTM(3, 4), nn.Linear(3, 4), nn.Conv1d(3, 4, 1))
    before = list(model)
    rnnfast.convert(model)
    assert all(a is b for a, b in zip(model, before))


@pytest.mark.parametrize("torch_cls, fast_cls", [
    (nn.LSTM, rnnfast.LSTM), (nn.GRU, rnnfast.GRU), (nn.LSTMCell, rnnfast.LSTMCell),
    (nn.GRUCell, rnnfast.GRUCell)])
def test_lstm_and_gru_convert_both_ways_sharing_parameters(torch_cls, fast_cls):
    model = nn.Sequential(torch_cls(3, 4), nn.Linear(4, 4))
    params = list(model[0].parameters())
    assert type(rnnfast.convert(model)[0]) is fast_cls
    assert all(a is b for a, b in zip(model[0].parameters(), params))
    assert type(rnnfast.to_torch(model)[0]) is torch_cls
    assert all(a is b for a, b in zip(model[0].parameters(), params))


def test_convert_is_idempotent():
    model = rnnfast.convert(make_model())
    before = list(model.modules())
    rnnfast.convert(model)
    assert all(a is b for a, b in zip(model.modules(), before))


def test_hooks_are_carried_over():
    model = make_model()
    seen = []
    model.encoder.register_forward_hook(lambda m, i, o: seen.append(type(m).__module__))
    rnnfast.convert(model)
    model(torch.randn(1, 2, 3, dtype=torch.float64))
    assert seen == ["rnnfast.modules"]


@pytest.mark.parametrize("direction", ["convert", "to_torch"])
def test_parametrized_weight_norm_module_is_converted(direction):
    torch.manual_seed(0)
    cls = nn.RNN if direction == "convert" else rnnfast.RNN
    root = cls(3, 4, 2).double()
    nn.utils.parametrizations.weight_norm(root, "weight_hh_l1")
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    expected = root(x)[0]
    new = getattr(rnnfast, direction)(root)
    target = rnnfast.RNN if direction == "convert" else nn.RNN
    assert isinstance(new, target) and type(new).__bases__ == (target,)
    assert nn.utils.parametrize.is_parametrized(new, "weight_hh_l1")
    out = new(x)[0]
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    out.sum().backward()
    assert new.parametrizations.weight_hh_l1.original0.grad is not None
    nn.utils.parametrize.remove_parametrizations(new, "weight_hh_l1")
    assert type(new) is target
