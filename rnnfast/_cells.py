"""The cell table of rnnfast, in Python: what each mode's weights, states and workspace look like.

The modes are nn.RNNBase's own strings. One place for the sizes that the fake kernels
(_ops.py), the oracle (reference.py), functional.py and the tests derive from a mode;
csrc/rnn_args.cpp holds the C++ side of the same table.

Notation: G gates, S states, H hidden size, P = proj_size if proj_size > 0 (LSTM only)
else H, D directions, NL layers, N batch, rows = T*N dense or sum(batch_sizes) packed.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = [
    "MODES", "check_mode", "gates", "states", "state_names", "sizes", "weights_per_layer",
    "weight_count", "weight_names", "weight_shapes", "layer_weights", "hidden_shapes",
    "output_width", "output_shape", "workspace_shapes",
]

# mode -> (G gates, S states). Gate order within the G*H rows is torch's:
# LSTM i, f, g, o; GRU r, z, n.
_TABLE = {
    "RNN_TANH": (1, 1),
    "RNN_RELU": (1, 1),
    "LSTM": (4, 2),
    "GRU": (3, 1),
}
MODES = tuple(_TABLE)


def check_mode(mode: str) -> None:
    """The kernels' check of the mode string, with their message."""
    if mode not in _TABLE:
        raise RuntimeError(
            f"rnnfast: mode must be 'RNN_TANH', 'RNN_RELU', 'LSTM' or 'GRU', got '{mode}'"
        )


def gates(mode: str) -> int:
    """G: W_ih is (G*H, I_l), W_hh is (G*H, P)."""
    check_mode(mode)
    return _TABLE[mode][0]


def states(mode: str) -> int:
    """S: the length of the hx / h_n lists, 2 for LSTM ([h, c]), else 1 ([h])."""
    check_mode(mode)
    return _TABLE[mode][1]


def state_names(mode: str) -> str:
    """What the hx list holds, as the kernels' messages name it: '[h0, c0]' or '[h0]'."""
    return "[h0, c0]" if states(mode) == 2 else "[h0]"


def sizes(mode: str, weights: Sequence[torch.Tensor], proj_size: int) -> tuple[int, int, int]:
    """(G, H, P) of a call: H from weight_hh_l0, which is (G*H, P)."""
    G = gates(mode)
    H = weights[1].shape[0] // G
    return G, H, (proj_size if proj_size > 0 else H)


def weights_per_layer(has_biases: bool, proj_size: int) -> int:
    """Weights per layer and direction: w_ih, w_hh[, b_ih, b_hh][, w_hr]."""
    return 2 + (2 if has_biases else 0) + (1 if proj_size > 0 else 0)


def weight_count(num_layers: int, bidirectional: bool, has_biases: bool, proj_size: int) -> int:
    return num_layers * (2 if bidirectional else 1) * weights_per_layer(has_biases, proj_size)


def _kinds(has_biases: bool, proj_size: int) -> list[str]:
    return (["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if has_biases else [])
            + (["weight_hr"] if proj_size > 0 else []))


def weight_names(num_layers: int, bidirectional: bool, has_biases: bool,
                 proj_size: int = 0) -> list[str]:
    """nn.RNNBase's names of the flat weights (its _flat_weights_names), in their order."""
    return [f"{k}_l{layer}{'_reverse' if d else ''}" for layer in range(num_layers)
            for d in range(2 if bidirectional else 1) for k in _kinds(has_biases, proj_size)]


def weight_shapes(mode: str, input_size: int, hidden_size: int, num_layers: int,
                  bidirectional: bool, has_biases: bool, proj_size: int) -> list[tuple[int, ...]]:
    """The shape of every flat weight, in weight_names' order."""
    G, H = gates(mode), hidden_size
    D = 2 if bidirectional else 1
    P = proj_size if proj_size > 0 else H
    shapes = []
    for layer in range(num_layers):
        in_size = input_size if layer == 0 else D * P
        for _ in range(D):
            shapes += [(G * H, in_size), (G * H, P)]
            if has_biases:
                shapes += [(G * H,), (G * H,)]
            if proj_size > 0:
                shapes.append((P, H))
    return shapes


def layer_weights(weights: Sequence[torch.Tensor], layer: int, direction: int,
                  bidirectional: bool, has_biases: bool, proj_size: int):
    """(w_ih, w_hh, b_ih, b_hh, w_hr) of one layer and direction; absent ones are None."""
    per = weights_per_layer(has_biases, proj_size)
    first = (layer * (2 if bidirectional else 1) + direction) * per
    w = list(weights[first : first + per])
    b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
    w_hr = w[-1] if proj_size > 0 else None
    return w[0], w[1], b_ih, b_hh, w_hr


def hidden_shapes(mode: str, num_layers: int, bidirectional: bool, N: int, H: int,
                  P: int) -> list[tuple[int, int, int]]:
    """Shapes of the hx / h_n list: [(NL*D, N, P)], plus (NL*D, N, H) for LSTM's c."""
    ND = num_layers * (2 if bidirectional else 1)
    return [(ND, N, P)] + ([(ND, N, H)] if states(mode) == 2 else [])


def output_width(bidirectional: bool, P: int) -> int:
    """Features of the output (and of every layer's input above the first): D*P."""
    return (2 if bidirectional else 1) * P


def output_shape(input_shape: Sequence[int], packed: bool, bidirectional: bool,
                 P: int) -> tuple[int, ...]:
    """(T, N, D*P) dense, (rows, D*P) packed."""
    lead = tuple(input_shape[:1]) if packed else tuple(input_shape[:2])
    return lead + (output_width(bidirectional, P),)


def workspace_shapes(mode: str, num_layers: int, bidirectional: bool, rows: int, H: int,
                     P: int, train: bool) -> list[tuple[int, int, int]]:
    """What rnn_forward keeps for _rnn_backward.

    [0] the outputs of the layers below the top one (NL-1, rows, D*P), always; with
    train, LSTM adds [1] gates i,f,g,o after activation (NL, rows, D*4H) and [2] c
    (NL, rows, D*H), GRU adds [1] gates r,z,n after activation (NL, rows, D*3H) and
    [2] W_hn h_prev + b_hn (NL, rows, D*H). Elman keeps only [0].
    """
    D = 2 if bidirectional else 1
    shapes = [(num_layers - 1, rows, D * P)]
    if train and mode in ("LSTM", "GRU"):
        shapes += [(num_layers, rows, D * gates(mode) * H), (num_layers, rows, D * H)]
    return shapes
