"""ONNX export of models holding rnnfast modules: ``torch.onnx.export`` as for torch.nn.

While ``torch.onnx.export`` traces a model, the rnnfast modules compute with operations the
ONNX exporters translate, not with rnnfast's own ops (the hook: rnnfast/modules.py,
``_exporting_to_onnx``); after the export they run rnnfast's kernels again.

- RNN, LSTM, GRU: everything but the op call is the modules' own code (argument checks,
  hx defaults, unbatched and batch-first input); the op call is :func:`sequence` below:
  - TorchScript exporter (``dynamo=False``): torch's own ops (``aten::rnn_tanh``,
    ``rnn_relu``, ``lstm``, ``gru``), which it writes as ONNX RNN / LSTM / GRU nodes, as for
    nn.RNN / LSTM / GRU; PackedSequence input works as it does for them.
  - dynamo exporter (the default): the ONNX RNN / LSTM / GRU nodes themselves, one per
    layer, through ``torch.onnx.ops.symbolic_multi_out``. torch's own ops would do worse
    there: torch.export fixes their sequence length to the example's (silently, even with
    dynamic_shapes), and the exporter writes the Elman RNN as a block of nodes per time
    step. If the default (non-strict) capture of a model fails, the exporter retries with a
    strict (dynamo) one, which cannot trace symbolic ops: there torch's ops are used.
    PackedSequence input cannot be exported (nor can it for torch.nn's modules): a clear
    error when hx is given; without hx, torch's own TypeError from creating the zero state,
    the same as torch.nn's.
- RNNCell, LSTMCell, GRUCell: torch.nn's cell forward on the module's parameters (Gemm and
  pointwise nodes, as for torch.nn's cells; ONNX has no cell operator).
- LSTM with ``proj_size > 0`` cannot be exported: ONNX's LSTM has no projection (torch's
  exporters fail on nn.LSTM with proj_size too).
"""

from __future__ import annotations

import torch
from torch import Tensor, _VF

__all__: list[str] = []

# Rows of torch's gate blocks in the order ONNX's operators take them: LSTM i f g o ->
# i o f c(= g); GRU r z n -> z r h(= n).
_ONNX_GATE_ORDER = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2)}
_ONNX_OPERATOR = {"RNN_TANH": "RNN", "RNN_RELU": "RNN", "LSTM": "LSTM", "GRU": "GRU"}


def sequence(
    mode: str,
    input: Tensor,
    hx: list[Tensor],
    weights: list[Tensor],
    *,
    batch_sizes: Tensor | None,
    has_biases: bool,
    num_layers: int,
    proj_size: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
) -> tuple[Tensor, list[Tensor]]:
    """``rnnfast.functional._sequence`` (same arguments and results) while torch.onnx.export
    traces the model."""
    if proj_size > 0:
        # torch's TorchScript exporter refuses nn.LSTM here ("LSTMs with projections");
        # its dynamo exporter writes a model that fails to run.
        raise torch.onnx.errors.OnnxExporterError(
            f"ONNX export of rnnfast.LSTM with proj_size={proj_size} is not supported: the "
            "ONNX LSTM operator has no projection (torch.nn.LSTM with proj_size > 0 cannot be "
            "exported either)"
        )
    torchscript = torch._C._get_tracing_state() is not None
    if batch_sizes is not None and not torchscript:
        raise torch.onnx.errors.OnnxExporterError(
            "rnnfast: a PackedSequence input cannot be exported with torch.onnx.export's "
            "dynamo exporter (torch.nn's RNN modules fail there too); export with "
            "dynamo=False, or pass padded input"
        )
    if torchscript or torch.compiler.is_dynamo_compiling():
        # The TorchScript exporter; or the dynamo exporter's second try, a strict
        # (dynamo) torch.export, which cannot trace symbolic ONNX ops.
        return _torch_op(mode, input, hx, weights, batch_sizes, has_biases, num_layers,
                         dropout, train, bidirectional, batch_first)
    return _onnx_nodes(mode, input, hx, weights, has_biases, num_layers, dropout, train,
                       bidirectional, batch_first)


def _torch_op(mode, input, hx, weights, batch_sizes, has_biases, num_layers, dropout, train,
              bidirectional, batch_first):
    """The call nn.RNN / LSTM / GRU.forward make: for the TorchScript exporter and the
    dynamo exporter's strict capture."""
    function = {"RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu, "LSTM": _VF.lstm,
                "GRU": _VF.gru}[mode]
    states = (hx[0], hx[1]) if mode == "LSTM" else hx[0]
    if batch_sizes is None:
        result = function(input, states, weights, has_biases, num_layers, dropout, train,
                          bidirectional, batch_first)
    else:
        result = function(input, batch_sizes, states, weights, has_biases, num_layers, dropout,
                          train, bidirectional)
    return result[0], list(result[1:])


def _onnx_nodes(mode, input, hx, weights, has_biases, num_layers, dropout, train,
                bidirectional, batch_first):
    """One ONNX RNN / LSTM / GRU node per layer, for the dynamo exporter.

    weights is nn.RNNBase's flat list: per layer, per direction w_ih (G*H, I),
    w_hh (G*H, H)[, b_ih, b_hh (G*H)]. Per layer ONNX takes W (D, G*H, I), R (D, G*H, H),
    B (D, 2*G*H) = [b_ih | b_hh] with the gate blocks in its own order, and
    initial_h (and initial_c) (D, N, H), time-major; it returns Y (T, D, N, H) and
    Y_h (and Y_c) (D, N, H).
    """
    D = 2 if bidirectional else 1
    per_direction = 4 if has_biases else 2
    H = weights[1].shape[1]
    operator = _ONNX_OPERATOR[mode]
    attrs = {"hidden_size": H, "direction": "bidirectional" if bidirectional else "forward"}
    if mode == "RNN_TANH" or mode == "RNN_RELU":
        attrs["activations"] = ["Tanh" if mode == "RNN_TANH" else "Relu"] * D
    if mode == "GRU":
        attrs["linear_before_reset"] = 1  # torch's GRU: r * (W_hn h + b_hn)

    # Blocks of H rows, in the order ONNX takes them: W's and R's rows; B = [b_ih | b_hh].
    order = _ONNX_GATE_ORDER.get(mode, (0,))
    bias_order = order + tuple(len(order) + g for g in order)

    def reorder(t: Tensor, blocks: tuple[int, ...]) -> Tensor:  # (D, rows, ...)
        return t if blocks == tuple(range(len(blocks))) else \
            t.unflatten(1, (len(blocks), H))[:, list(blocks)].flatten(1, 2)

    layer_input = input.transpose(0, 1) if batch_first else input
    T, N = layer_input.shape[0], layer_input.shape[1]
    h_n: list[list[Tensor]] = [[] for _ in hx]  # per state, per layer: (D, N, H)
    for layer in range(num_layers):
        firsts = [(layer * D + direction) * per_direction for direction in range(D)]
        W = reorder(torch.stack([weights[k] for k in firsts]), order)
        R = reorder(torch.stack([weights[k + 1] for k in firsts]), order)
        B = reorder(torch.stack([torch.cat([weights[k + 2], weights[k + 3]]) for k in firsts]),
                    bias_order) if has_biases else None
        initial = [state[layer * D:(layer + 1) * D] for state in hx]
        node_inputs = [layer_input, W, R, B,
                       None,  # sequence_lens: every sequence has the full length
                       *initial]
        Y, *states = torch.onnx.ops.symbolic_multi_out(
            operator, node_inputs, attrs,
            dtypes=[input.dtype] * (1 + len(hx)),
            shapes=[[T, D, N, H]] + [[D, N, H]] * len(hx),
        )
        # (T, D, N, H) -> (T, N, D * H): the directions side by side, as torch's output.
        layer_input = Y.permute(0, 2, 1, 3).reshape(T, N, D * H)
        if train and dropout > 0 and layer < num_layers - 1:
            layer_input = torch.nn.functional.dropout(layer_input, dropout, training=True)
        for per_layer, state in zip(h_n, states):
            per_layer.append(state)
    output = layer_input.transpose(0, 1) if batch_first else layer_input
    return output, [torch.cat(per_layer) for per_layer in h_n]
