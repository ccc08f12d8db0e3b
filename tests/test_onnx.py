"""torch.onnx.export of models holding rnnfast modules, with both of torch's exporters.

Every exported model runs in onnxruntime on fresh input of another sequence length and batch
size (the exports declare both dynamic) and must give rnnfast's own results (float32, 1e-5).
RNN, LSTM and GRU become the standard ONNX RNN / LSTM / GRU nodes under both exporters; the
cells become what torch.nn's cells become. After an export the modules run rnnfast's ops
again. The TorchScript exporter (dynamo=False) takes well under a second per model and
carries the wide coverage; the dynamo exporter (the default) takes seconds per model, so it
gets one model holding every module kind, the error cases, its strict-capture retry and
training-mode dropout.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils._python_dispatch import TorchDispatchMode

import rnnfast
from helpers import TOL, randn, seed_per_test  # noqa: F401  (autouse fixture)

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # the dynamo exporter's translations

DT = torch.float32
# The example input's sequence length and batch size, and those of the input onnxruntime
# then runs (different, so that a length or batch size fixed in the graph would fail).
T0, B0, T1, B1 = 5, 2, 7, 3
I, H = 3, 4


def onnx_run(path, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {arg.name: t.numpy() for arg, t in zip(session.get_inputs(), inputs, strict=True)}
    return [torch.from_numpy(out) for out in session.run(None, feeds)]


def op_types(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def export(model, inputs: list[torch.Tensor], dynamic: list[dict[int, str]], path, dynamo):
    """torch.onnx.export with the axes named in `dynamic` (per input, {axis: name}) dynamic."""
    names = [f"input{k}" for k in range(len(inputs))]
    if dynamo:
        dims = {name: torch.export.Dim(name) for axes in dynamic for name in axes.values()}
        shapes = tuple({axis: dims[name] for axis, name in axes.items()} for axes in dynamic)
        torch.onnx.export(model, tuple(inputs), path, dynamo=True, input_names=names,
                          dynamic_shapes=shapes, verbose=False)
    else:
        torch.onnx.export(model, tuple(inputs), path, dynamo=False, input_names=names,
                          dynamic_axes=dict(zip(names, dynamic)))


def assert_matches_rnnfast(model, path, inputs: list[torch.Tensor]) -> None:
    with torch.no_grad():
        expected = model(*inputs)
    got = onnx_run(path, inputs)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, **TOL[DT])


class OpRecorder(TorchDispatchMode):
    """Records the name of every op that runs."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def assert_runs_rnnfast_ops(model, inputs, expected_rnnfast_calls: int) -> None:
    """After an export, the model computes with rnnfast's ops again, and only with them."""
    with torch.no_grad(), OpRecorder() as recorder:
        model(*inputs)
    rnnfast_calls = [op for op in recorder.ops if op.startswith("rnnfast.")]
    torch_rnn_ops = [op for op in recorder.ops if op.split(".")[-1] in (
        "rnn_tanh", "rnn_relu", "lstm", "gru", "rnn_tanh_cell", "rnn_relu_cell", "lstm_cell",
        "gru_cell")]
    assert len(rnnfast_calls) == expected_rnnfast_calls, recorder.ops
    assert torch_rnn_ops == [], torch_rnn_ops


# ---------------------------------------------------------------------------
# RNN, LSTM, GRU
# ---------------------------------------------------------------------------


class Tagger(nn.Module):
    """An rnnfast RNN / LSTM / GRU, then a Linear on its output; returns
    (scores, h_n) or, for LSTM, (scores, h_n, c_n)."""

    def __init__(self, kind: str, **kwargs):
        super().__init__()
        self.rnn = getattr(rnnfast, kind)(I, H, dtype=DT, **kwargs)
        self.head = nn.Linear(H * (2 if self.rnn.bidirectional else 1), 2, dtype=DT)

    def forward(self, x, *hx):
        if isinstance(self.rnn, rnnfast.LSTM):
            out, (h_n, c_n) = self.rnn(x, tuple(hx) if hx else None)
            return self.head(out), h_n, c_n
        out, h_n = self.rnn(x, *hx)
        return self.head(out), h_n


def tagger_inputs(model: Tagger, T: int, B: int, with_hx: bool) -> list[torch.Tensor]:
    rnn = model.rnn
    x = randn(B, T, I, dtype=DT) if rnn.batch_first else randn(T, B, I, dtype=DT)
    if not with_hx:
        return [x]
    states = 2 if isinstance(rnn, rnnfast.LSTM) else 1
    layers = rnn.num_layers * (2 if rnn.bidirectional else 1)
    return [x] + [randn(layers, B, H, dtype=DT) for _ in range(states)]


def tagger_dynamic_axes(model: Tagger, with_hx: bool) -> list[dict[int, str]]:
    x_axes = {0: "batch", 1: "time"} if model.rnn.batch_first else {0: "time", 1: "batch"}
    states = 2 if isinstance(model.rnn, rnnfast.LSTM) else 1
    return [x_axes] + ([{1: "batch"}] * states if with_hx else [])


KINDS = [
    pytest.param("RNN", dict(nonlinearity="tanh"), id="RNN-tanh"),
    pytest.param("RNN", dict(nonlinearity="relu"), id="RNN-relu"),
    pytest.param("LSTM", {}, id="LSTM"),
    pytest.param("GRU", {}, id="GRU"),
]
LAYOUTS = [
    pytest.param(dict(), False, id="1-layer"),
    pytest.param(dict(), True, id="1-layer-hx"),
    pytest.param(dict(num_layers=2, bidirectional=True, batch_first=True), False,
                 id="2-layers-bidirectional-batch-first"),
    pytest.param(dict(num_layers=2, bidirectional=True, batch_first=True), True,
                 id="2-layers-bidirectional-batch-first-hx"),
    pytest.param(dict(num_layers=2, bias=False), True, id="2-layers-no-bias-hx"),
]


@pytest.mark.parametrize("layout, with_hx", LAYOUTS)
@pytest.mark.parametrize("kind, kind_kwargs", KINDS)
def test_torchscript_exporter_rnn_lstm_gru(kind, kind_kwargs, layout, with_hx, tmp_path):
    """dynamo=False: standard ONNX nodes, onnxruntime's results equal rnnfast's at another
    sequence length and batch size."""
    model = Tagger(kind, **kind_kwargs, **layout).eval()
    path = tmp_path / "model.onnx"
    export(model, tagger_inputs(model, T0, B0, with_hx), tagger_dynamic_axes(model, with_hx),
           path, dynamo=False)
    assert kind in op_types(path)  # the ONNX operator is named as the module
    assert_matches_rnnfast(model, path, tagger_inputs(model, T1, B1, with_hx))


class PackedTagger(Tagger):
    """Tagger on padded, batch-first input with lengths: packs, runs, pads back."""

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, hidden = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True)
        states = hidden if isinstance(hidden, tuple) else (hidden,)
        return (self.head(out), *states)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_torchscript_exporter_packed_sequence(kind, tmp_path):
    """A PackedSequence inside the model exports with dynamo=False (as for torch.nn's
    modules); unsorted lengths of another batch size and maximum length run right."""
    model = PackedTagger(kind, num_layers=2, bidirectional=True, batch_first=True).eval()
    path = tmp_path / "model.onnx"
    export(model, [randn(B0, T0, I, dtype=DT), torch.tensor([4, T0])],
           [{0: "batch", 1: "time"}, {0: "batch"}], path, dynamo=False)
    assert kind in op_types(path)  # the ONNX operator is named as the module
    assert_matches_rnnfast(model, path, [randn(B1, T1, I, dtype=DT), torch.tensor([3, T1, 1])])


# ---------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------

CELLS = [
    pytest.param("RNNCell", dict(nonlinearity="tanh"), id="RNNCell-tanh"),
    pytest.param("RNNCell", dict(nonlinearity="relu"), id="RNNCell-relu"),
    pytest.param("LSTMCell", {}, id="LSTMCell"),
    pytest.param("GRUCell", {}, id="GRUCell"),
]


class CellStep(nn.Module):
    """One step of an rnnfast cell, then a Linear on h'; returns (scores, *new states)."""

    def __init__(self, kind: str, **kwargs):
        super().__init__()
        self.cell = getattr(rnnfast, kind)(I, H, dtype=DT, **kwargs)
        self.head = nn.Linear(H, 2, dtype=DT)
        self.is_lstm = kind == "LSTMCell"  # also after rnnfast.to_torch

    def forward(self, x, *hx):
        if self.is_lstm:
            h, c = self.cell(x, tuple(hx) if hx else None)
            return self.head(h), h, c
        h = self.cell(x, *hx)
        return self.head(h), h


@pytest.mark.parametrize("with_hx", [False, True], ids=["no-hx", "hx"])
@pytest.mark.parametrize("kind, kind_kwargs", CELLS)
def test_torchscript_exporter_cells(kind, kind_kwargs, with_hx, tmp_path):
    """dynamo=False: a cell exports to the nodes the torch.nn cell exports to (ONNX has no
    cell operator), and onnxruntime's results equal rnnfast's at another batch size."""
    model = CellStep(kind, **kind_kwargs).eval()
    states = 2 if kind == "LSTMCell" else 1

    def inputs(B):
        return [randn(B, I, dtype=DT)] + [randn(B, H, dtype=DT) for _ in range(states)
                                          if with_hx]

    dynamic = [{0: "batch"}] * (1 + (states if with_hx else 0))
    path, torch_path = tmp_path / "model.onnx", tmp_path / "torch.onnx"
    export(model, inputs(B0), dynamic, path, dynamo=False)
    assert_matches_rnnfast(model, path, inputs(B1))
    torch_model = rnnfast.to_torch(model)
    assert type(torch_model.cell) is getattr(nn, kind)
    export(torch_model, inputs(B0), dynamic, torch_path, dynamo=False)
    assert op_types(path) == op_types(torch_path)


# ---------------------------------------------------------------------------
# Both exporters on one model; errors; rnnfast's ops after an export
# ---------------------------------------------------------------------------


class EveryModule(nn.Module):
    """Every rnnfast module kind, in layouts the TorchScript tests cover one by one: a
    2-layer bidirectional batch-first tanh RNN without hx; a relu RNN, a bidirectional LSTM
    without biases and a 2-layer bidirectional GRU, with given states; the three cells on
    the last step; a Linear."""

    def __init__(self):
        super().__init__()
        self.rnn_tanh = rnnfast.RNN(I, H, 2, bidirectional=True, batch_first=True, dtype=DT)
        self.rnn_relu = rnnfast.RNN(2 * H, H, nonlinearity="relu", batch_first=True, dtype=DT)
        self.lstm = rnnfast.LSTM(H, H, bias=False, batch_first=True, bidirectional=True,
                                 dtype=DT)
        self.gru = rnnfast.GRU(2 * H, H, 2, bidirectional=True, dtype=DT)
        self.rnn_cell = rnnfast.RNNCell(2 * H, H, nonlinearity="relu", dtype=DT)
        self.lstm_cell = rnnfast.LSTMCell(H, H, dtype=DT)
        self.gru_cell = rnnfast.GRUCell(H, H, dtype=DT)
        self.head = nn.Linear(2 * H, 2, dtype=DT)

    def forward(self, x, h0, lstm_h0, lstm_c0, gru_h0):
        out, h_tanh = self.rnn_tanh(x)
        out, h_relu = self.rnn_relu(out, h0)
        out, (h_lstm, c_lstm) = self.lstm(out, (lstm_h0, lstm_c0))
        out, h_gru = self.gru(out.transpose(0, 1), gru_h0)
        h = self.rnn_cell(out[-1], h0[0])
        h, c = self.lstm_cell(h)
        h = self.gru_cell(h, c)
        return self.head(out), h_tanh, h_relu, h_lstm, c_lstm, h_gru, h, c


def every_module_inputs(T: int, B: int) -> list[torch.Tensor]:
    return [randn(B, T, I, dtype=DT), randn(1, B, H, dtype=DT), randn(2, B, H, dtype=DT),
            randn(2, B, H, dtype=DT), randn(4, B, H, dtype=DT)]


EVERY_MODULE_AXES = [{0: "batch", 1: "time"}] + [{1: "batch"}] * 4
# rnn_forward for the 4 sequence modules and the LSTM and GRU cells; rnn_cell_forward.
EVERY_MODULE_RNNFAST_CALLS = 7


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_every_module_exports_and_still_runs_rnnfast(dynamo, tmp_path):
    """Both exporters: standard RNN, LSTM and GRU nodes, dynamic sequence length and
    batch size, onnxruntime's results equal rnnfast's; after the export the model computes
    with rnnfast's ops again (not torch's), with the same results as before it."""
    model = EveryModule().eval()
    example = every_module_inputs(T0, B0)
    with torch.no_grad():
        before = model(*example)
    path = tmp_path / "model.onnx"
    export(model, example, EVERY_MODULE_AXES, path, dynamo=dynamo)
    assert {"RNN", "LSTM", "GRU"} <= op_types(path)
    assert_matches_rnnfast(model, path, every_module_inputs(T1, B1))

    assert_runs_rnnfast_ops(model, example, EVERY_MODULE_RNNFAST_CALLS)
    with torch.no_grad():
        after = model(*example)
    for a, b in zip(after, before, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_lstm_with_proj_size_is_refused(dynamo, tmp_path):
    """ONNX's LSTM has no projection (torch.nn.LSTM cannot be exported with proj_size
    either): a clear error naming proj_size, with either exporter."""
    model = rnnfast.LSTM(I, H, proj_size=2, dtype=DT).eval()
    with pytest.raises(torch.onnx.OnnxExporterError, match="proj_size=2 is not supported"):
        torch.onnx.export(model, (randn(T0, B0, I, dtype=DT),), tmp_path / "model.onnx",
                          dynamo=dynamo, verbose=False)


def test_dynamo_exporter_refuses_packed_sequence(tmp_path):
    """The dynamo exporter cannot export a PackedSequence (torch.nn's modules fail there
    too): a clear error that points at dynamo=False."""

    class WithHx(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = rnnfast.GRU(I, H, dtype=DT)

        def forward(self, x, lengths, h0):
            packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
            return self.gru(packed, h0)[1]

    with pytest.raises(torch.onnx.OnnxExporterError, match="PackedSequence .* dynamo=False"):
        torch.onnx.export(WithHx(), (randn(T0, B0, I, dtype=DT), torch.tensor([4, T0]),
                                     randn(1, B0, H, dtype=DT)),
                          tmp_path / "model.onnx", dynamo=True, verbose=False)


def test_dynamo_exporter_strict_capture_also_exports(tmp_path, monkeypatch):
    """When torch.export's default (non-strict) capture of a model fails, the dynamo
    exporter retries with a strict (dynamo) one, which folds torch.onnx.is_in_onnx_export()
    to False and cannot trace symbolic ONNX ops: the modules still see the export and give
    torch's own RNN ops, which the exporter translates. (Only that capture is allowed here;
    it is slow, so the model is small.)"""
    from torch.onnx._internal.exporter import _capture_strategies

    monkeypatch.setattr(_capture_strategies, "CAPTURE_STRATEGIES",
                        (_capture_strategies.TorchExportStrictStrategy,))
    model = rnnfast.GRU(I, H, dtype=DT).eval()

    def inputs():
        return [randn(T0, B0, I, dtype=DT), randn(1, B0, H, dtype=DT)]

    path = tmp_path / "model.onnx"
    export(model, inputs(), [{}, {}], path, dynamo=True)
    assert "GRU" in op_types(path)
    assert_matches_rnnfast(model, path, inputs())


def test_dynamo_exporter_keeps_inter_layer_dropout_in_training_mode(tmp_path):
    """A module exported in training mode keeps its inter-layer dropout (an ONNX Dropout
    node between the layers), as torch.nn's modules do under the dynamo exporter."""
    model = rnnfast.GRU(I, H, 2, dropout=0.5, dtype=DT)
    assert model.training
    path = tmp_path / "model.onnx"
    export(model, [randn(T0, B0, I, dtype=DT)], [{}], path, dynamo=True)
    assert {"GRU", "Dropout"} <= op_types(path)
