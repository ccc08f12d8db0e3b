"""Keras 3 layers on rnnfast's fused kernels: SimpleRNN, LSTM, GRU (torch backend).

    import os
    os.environ["KERAS_BACKEND"] = "torch"      # before keras is first imported
    import keras
    from rnnfast.keras import SimpleRNN, LSTM, GRU

    model = keras.Sequential([keras.Input((10, 1)), LSTM(50), keras.layers.Dense(1)])

Each class subclasses the stock `keras.layers` class of the same name and overrides only
`inner_loop`, the sequence loop `RNN.call` delegates to. Constructor, config, weights
(names, shapes, order), `summary()`, parameter counts and `.keras` / `.weights.h5` files
are the stock layer's, so weights move freely between stock and rnnfast models. The loop
runs as one rnnfast.functional op on the layer's own Keras variables (gradients reach
them). Configurations the kernels cannot compute go back to Keras's own loop and give
stock Keras's numbers: a mask, `unroll=True`, `recurrent_dropout` in training,
activations other than tanh (SimpleRNN: or relu) / sigmoid recurrent activation, GRU
`reset_after=False`, and LSTM/GRU on CUDA (Keras's own cuDNN path there). `use_cudnn`
does not matter: rnnfast's loop is not cuDNN.

If KERAS_BACKEND is unset and keras is not imported yet, importing this module sets it to
"torch". `import rnnfast` alone never imports keras.
"""

from __future__ import annotations

import os
import sys

_HOW_TO = (
    "rnnfast.keras needs Keras 3 running on the PyTorch backend: install it with "
    "`pip install keras`, and set the environment variable KERAS_BACKEND=torch before keras "
    "is first imported (e.g. `KERAS_BACKEND=torch python train.py`, or "
    "os.environ['KERAS_BACKEND'] = 'torch' at the top of the program)."
)


def _import_keras_on_torch():
    """Imports keras, checking that it runs on the torch backend (ImportError otherwise)."""
    if "keras" not in sys.modules:
        requested = os.environ.get("KERAS_BACKEND")
        if requested is None:
            os.environ["KERAS_BACKEND"] = "torch"
        elif requested != "torch":
            raise ImportError(f"{_HOW_TO} KERAS_BACKEND is set to {requested!r}.")
    try:
        import keras
    except ImportError as err:
        raise ImportError(f"{_HOW_TO} `import keras` failed: {err}") from err
    backend = keras.backend.backend() if hasattr(keras, "backend") else "unknown"
    if backend != "torch":
        raise ImportError(f"{_HOW_TO} keras was already imported with the {backend!r} backend.")
    return keras


keras = _import_keras_on_torch()

import torch  # noqa: E402
from keras import activations, ops  # noqa: E402

from . import _build_info, functional  # noqa: E402

__all__ = ["SimpleRNN", "LSTM", "GRU"]

# The activation objects the kernels compute, as Keras's own cuDNN test compares them.
_TANH = (activations.tanh, ops.tanh, torch.tanh)
_SIGMOID = (activations.sigmoid, ops.sigmoid, torch.sigmoid)
_RELU = (activations.relu, ops.relu, torch.relu)

# Where the kernels run ("meta": Keras's symbolic pass, through the ops' fake kernels).
# Elsewhere, and for LSTM/GRU on CUDA (Keras's cuDNN path there; rnnfast's CUDA LSTM/GRU
# kernels have not run on a GPU yet), Keras's loop runs.
_ELMAN_DEVICES = ("cpu", "meta", "cuda") if _build_info.with_cuda else ("cpu", "meta")
_GATED_DEVICES = ("cpu", "meta")


def _loop_is_fusable(layer, sequences, mask, training: bool, devices) -> bool:
    """What every cell needs: a device with kernels, no mask (per-step carry-over), no
    unrolling asked for, and no per-gate masks (recurrent dropout, or implementation 1's
    input masks) in training."""
    cell = layer.cell
    if isinstance(mask, (list, tuple)):
        mask = mask[0]  # as the stock LSTM/GRU inner_loop unwraps a nested mask
    per_gate_masks = cell.recurrent_dropout > 0 or (
        cell.dropout > 0 and getattr(cell, "implementation", 2) == 1)
    return (sequences.device.type in devices and mask is None and not layer.unroll
            and not (training and per_gate_masks))


def _fused_loop(layer, run, sequences, initial_state, training: bool):
    """Runs `run(x, states) -> (output, final states)` on the whole sequence and returns
    inner_loop's (last_output, outputs, states). x is (B, T, I) batch-major in the
    kernel's dtype; states is a list of (1, B, U)."""
    cell = layer.cell
    if training and cell.dropout > 0:
        # RNN.call drew this (B, I) mask before the loop; stock LSTM/GRU apply it the same way.
        sequences = sequences * ops.expand_dims(cell.get_dropout_mask(sequences[:, 0, :]), 1)
    dtype = ops.convert_to_tensor(cell.kernel).dtype
    x = ops.convert_to_tensor(sequences).to(dtype)
    if layer.go_backwards:
        x = torch.flip(x, dims=(1,))  # outputs stay in processed order, as in Keras
    states = [ops.convert_to_tensor(s).to(dtype) for s in initial_state]
    if layer.stateful:
        # RNN.call assigns the new states in place into the tensors it passed here.
        states = [s.clone() for s in states]
    output, final_states = run(x, [s.unsqueeze(0) for s in states])
    final_states = [s.squeeze(0) for s in final_states]
    last = final_states[0]
    outputs = output if layer.return_sequences else last.unsqueeze(1)
    return last, outputs, final_states


def _torch_weights(cell, swap_zr: bool = False) -> tuple[list, bool]:
    """nn.RNNBase's weight list [w_ih, w_hh(, b_ih, b_hh)] built from the cell's live
    variables, and has_biases. A single Keras bias becomes b_ih (b_hh = 0); GRU's (2, 3U)
    bias gives both. swap_zr: Keras's GRU gate order z,r,h becomes torch's r,z,n."""
    U = cell.units

    def reorder(w):
        if not swap_zr:
            return w
        return torch.cat((w[..., U : 2 * U], w[..., :U], w[..., 2 * U :]), dim=-1)

    kernel = ops.convert_to_tensor(cell.kernel)
    recurrent = ops.convert_to_tensor(cell.recurrent_kernel)
    weights = [reorder(kernel).T, reorder(recurrent).T]
    if not cell.use_bias:
        return weights, False
    bias = reorder(ops.convert_to_tensor(cell.bias))
    if bias.dim() == 2:
        weights += [bias[0], bias[1]]
    else:
        weights += [bias, torch.zeros_like(bias)]
    return weights, True


@keras.saving.register_keras_serializable(package="rnnfast")
class SimpleRNN(keras.layers.SimpleRNN):
    """keras.layers.SimpleRNN whose loop runs on rnnfast's fused Elman kernel (tanh, relu)."""

    def inner_loop(self, sequences, initial_state, mask, training=False):
        activation = self.cell.activation
        nonlinearity = "tanh" if activation in _TANH else "relu" if activation in _RELU else None
        if nonlinearity is None or not _loop_is_fusable(self, sequences, mask, training,
                                                        _ELMAN_DEVICES):
            return super().inner_loop(sequences, initial_state, mask, training=training)
        weights, has_biases = _torch_weights(self.cell)

        def run(x, states):
            output, h_n = functional.rnn(x, states[0], weights, has_biases=has_biases,
                                         nonlinearity=nonlinearity, batch_first=True)
            return output, [h_n]

        return _fused_loop(self, run, sequences, initial_state, training)


def _gated_fusable(layer, sequences, mask, training) -> bool:
    cell = layer.cell
    return (cell.activation in _TANH and cell.recurrent_activation in _SIGMOID
            and _loop_is_fusable(layer, sequences, mask, training, _GATED_DEVICES))


def _gated_keras_loop(layer, stock_loop, sequences, initial_state, mask, training):
    """Fallback of LSTM and GRU: the stock layer's inner_loop (stock_loop), except where it
    is broken in keras 3.15.1 on torch (a stateful layer's backward; implementation=1 with
    dropout in training): there Keras's generic cell loop, keras.layers.RNN's, runs."""
    cell = layer.cell
    if layer.stateful or (training and cell.dropout > 0 and cell.implementation == 1):
        if isinstance(mask, (list, tuple)):
            mask = mask[0]  # as the stock LSTM/GRU inner_loop unwraps it
        return keras.layers.RNN.inner_loop(layer, sequences, initial_state, mask,
                                           training=training)
    return stock_loop(sequences, initial_state, mask, training=training)


@keras.saving.register_keras_serializable(package="rnnfast")
class LSTM(keras.layers.LSTM):
    """keras.layers.LSTM whose loop runs on rnnfast's fused LSTM kernel."""

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if not _gated_fusable(self, sequences, mask, training):
            return _gated_keras_loop(self, super().inner_loop, sequences, initial_state, mask,
                                     training)
        weights, has_biases = _torch_weights(self.cell)

        def run(x, states):
            output, (h_n, c_n) = functional.lstm(x, tuple(states), weights,
                                                 has_biases=has_biases, batch_first=True)
            return output, [h_n, c_n]

        return _fused_loop(self, run, sequences, initial_state, training)


@keras.saving.register_keras_serializable(package="rnnfast")
class GRU(keras.layers.GRU):
    """keras.layers.GRU whose loop runs on rnnfast's fused GRU kernel (reset_after=True,
    the default, is torch's GRU once the gate blocks are reordered)."""

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if not (self.cell.reset_after and _gated_fusable(self, sequences, mask, training)):
            return _gated_keras_loop(self, super().inner_loop, sequences, initial_state, mask,
                                     training)
        weights, has_biases = _torch_weights(self.cell, swap_zr=True)

        def run(x, states):
            output, h_n = functional.gru(x, states[0], weights, has_biases=has_biases,
                                         batch_first=True)
            return output, [h_n]

        return _fused_loop(self, run, sequences, initial_state, training)
