"""Functional API of rnnfast: thin wrappers over torch.ops.rnnfast.*.

These take nn.RNN's flat weight list and do only what cannot live in the kernel:
drawing dropout masks (so seeded training runs match nn.RNN) and the batch-first
view (the kernels work on time-major data, as ATen does).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rnn", "rnn_cell"]


def _autocast(*tensors):
    """Under autocast for the first tensor's device, every floating-point tensor but
    float64 is cast (differentiably) to the autocast dtype, as autocast does for the
    linear ops inside nn.RNN: the fused kernels then run in that dtype. No-op
    otherwise. Lists of tensors are cast element-wise; None passes through."""
    device_type = tensors[0].device.type
    if not (
        torch._C._is_any_autocast_enabled()
        and torch.amp.is_autocast_available(device_type)
        and torch.is_autocast_enabled(device_type)
    ):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t):
        if isinstance(t, (list, tuple)):
            return [cast(x) for x in t]
        if t is None or not t.is_floating_point() or t.dtype in (dtype, torch.float64):
            return t
        return t.to(dtype)

    return tuple(cast(t) for t in tensors)


def _dropout_masks(
    layer_shape: tuple[int, ...], num_layers: int, p: float, like: Tensor
) -> Tensor | None:
    """The masks nn.RNN's inter-layer dropout would draw, scaled by 1 / (1 - p).

    One bernoulli_ per layer in layer order on a tensor of the layer output's shape:
    the same random stream as torch's CPU dropout, so seeded runs match nn.RNN.
    """
    if p == 1:
        return torch.zeros(num_layers - 1, *layer_shape, dtype=like.dtype, device=like.device)
    masks = torch.empty(num_layers - 1, *layer_shape, dtype=like.dtype, device=like.device)
    for layer in range(num_layers - 1):
        masks[layer].bernoulli_(1 - p)
    return masks.div_(1 - p)


def rnn(
    input: Tensor,
    hx: Tensor,
    weights: list[Tensor],
    *,
    batch_sizes: Tensor | None = None,
    has_biases: bool = True,
    num_layers: int = 1,
    nonlinearity: str = "tanh",
    dropout: float = 0.0,
    train: bool = False,
    bidirectional: bool = False,
    batch_first: bool = False,
) -> tuple[Tensor, Tensor]:
    """Multi-layer Elman RNN over a whole sequence; returns (output, h_n).

    Args:
        input: (L, N, H_in), or (N, L, H_in) with batch_first, or packed data
            (sum of lengths, H_in) with batch_sizes.
        hx: (num_layers * D, N, H), D = 2 if bidirectional else 1.
        weights: nn.RNN's ``_flat_weights`` order: per layer, per direction
            w_ih, w_hh[, b_ih, b_hh].
        dropout, train: inter-layer dropout probability, applied only when train.
    Returns:
        output (L, N, D*H) (batch-first: a transposed view, as nn.RNN), and
        h_n (num_layers * D, N, H).
    """
    input, hx, weights = _autocast(input, hx, weights)
    if batch_first and batch_sizes is None:
        input = input.transpose(0, 1)
    masks = None
    if train and dropout > 0 and num_layers > 1:
        D = 2 if bidirectional else 1
        H = weights[1].shape[0]
        layer_shape = (input.shape[0], D * H) if batch_sizes is not None else (
            input.shape[0], input.shape[1], D * H)
        masks = _dropout_masks(layer_shape, num_layers, float(dropout), input)
        masks = masks.view(num_layers - 1, -1, D * H)
    output, h_n, _ = torch.ops.rnnfast.rnn_forward(
        input, hx, weights, batch_sizes, masks, has_biases, num_layers, nonlinearity, bidirectional
    )
    if batch_first and batch_sizes is None:
        output = output.transpose(0, 1)
    return output, h_n


def rnn_cell(
    input: Tensor,
    hx: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    nonlinearity: str = "tanh",
) -> Tensor:
    """One Elman cell step: act(input @ w_ih^T + b_ih + hx @ w_hh^T + b_hh).

    input (N, H_in), hx (N, H); returns (N, H).
    """
    input, hx, w_ih, w_hh, b_ih, b_hh = _autocast(input, hx, w_ih, w_hh, b_ih, b_hh)
    return torch.ops.rnnfast.rnn_cell_forward(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity)
