"""Drop-in replacements for torch.nn.RNN and torch.nn.RNNCell.

``rnnfast.RNN`` subclasses ``torch.nn.RNNBase`` (not ``torch.nn.RNN``): it inherits
nn.RNN's constructor validation, parameters, initialisation RNG stream, state_dict,
flat-weights machinery and repr, and it stays traceable by torch.compile with
fullgraph=True (dynamo graph-breaks on every ``isinstance(m, nn.RNN)``). The price:
``isinstance(m, torch.nn.RNN)`` is False; ``isinstance(m, torch.nn.RNNBase)`` is True.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import functional as F_rnn

__all__ = ["RNN", "RNNCell"]


def _dtype_name(dtype: torch.dtype) -> str:
    # ATen's ScalarType names, as they appear in torch's own matmul error messages.
    return {
        torch.float32: "Float",
        torch.float64: "Double",
        torch.float16: "Half",
        torch.bfloat16: "BFloat16",
    }.get(dtype, str(dtype).replace("torch.", "").capitalize())


class RNN(nn.RNNBase):
    r"""Multi-layer Elman RNN with tanh or ReLU, computed by rnnfast's fused kernels.

    Same constructor, parameters, initialisation and forward semantics as
    :class:`torch.nn.RNN`::

        RNN(input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True,
            batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None)

    forward(input, hx=None) -> (output, h_n)
        input: (L, N, H_in), (N, L, H_in) with batch_first, (L, H_in) unbatched, or a
        PackedSequence. hx: (D * num_layers, N, H) or (D * num_layers, H); never batch-first.
    """

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif self.nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(
                f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'."
            )
        super().__init__(mode, *args, **kwargs)

    def _check_devices_and_dtypes(self, input: Tensor, hx: Tensor) -> None:
        # The checks ATen runs for nn.RNN, with its messages: devices (hidden first,
        # then parameters), then hx dtype (on CPU torch fails inside addmm).
        if hx.device != input.device:
            raise RuntimeError(
                "Input and hidden tensors are not at the same device, found input tensor at "
                f"{input.device} and hidden tensor at {hx.device}"
            )
        for w in self._flat_weights:
            if w is not None and w.device != input.device:
                raise RuntimeError(
                    "Input and parameter tensors are not at the same device, found input tensor "
                    f"at {input.device} and parameter tensor at {w.device}"
                )
        if hx.dtype != input.dtype and not torch._C._is_any_autocast_enabled():
            raise RuntimeError(
                "mat1 and mat2 must have the same dtype, but got "
                f"{_dtype_name(hx.dtype)} and {_dtype_name(input.dtype)}"
            )

    def forward(self, input, hx=None):  # noqa: C901 - mirrors nn.RNN.forward step by step
        self._update_flat_weights()
        num_directions = 2 if self.bidirectional else 1
        orig_input = input
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch_size = batch_sizes[0]
            if hx is None:
                hx = torch.zeros(
                    self.num_layers * num_directions,
                    max_batch_size,
                    self.hidden_size,
                    dtype=input.dtype,
                    device=input.device,
                )
            else:
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            batch_sizes = None
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"RNN: Expected input to be 2D or 3D, got {input.dim()}D tensor instead"
                )
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
                if hx is not None:
                    if hx.dim() != 2:
                        raise RuntimeError(
                            f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor"
                        )
                    hx = hx.unsqueeze(1)
            elif hx is not None and hx.dim() != 3:
                raise RuntimeError(
                    f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor"
                )
            max_batch_size = input.size(0) if self.batch_first else input.size(1)
            sorted_indices = None
            unsorted_indices = None
            if hx is None:
                hx = torch.zeros(
                    self.num_layers * num_directions,
                    max_batch_size,
                    self.hidden_size,
                    dtype=input.dtype,
                    device=input.device,
                )
            else:
                hx = self.permute_hidden(hx, sorted_indices)

        self.check_forward_args(input, hx, batch_sizes)
        if self.mode != "RNN_TANH" and self.mode != "RNN_RELU":
            raise AssertionError(f"mode must be RNN_TANH or RNN_RELU, got {self.mode}")
        self._check_devices_and_dtypes(input, hx)

        output, hidden = F_rnn.rnn(
            input,
            hx,
            self._flat_weights,
            batch_sizes=batch_sizes,
            has_biases=self.bias,
            num_layers=self.num_layers,
            nonlinearity="tanh" if self.mode == "RNN_TANH" else "relu",
            dropout=self.dropout,
            train=self.training,
            bidirectional=self.bidirectional,
            batch_first=self.batch_first if batch_sizes is None else False,
        )

        if isinstance(orig_input, PackedSequence):
            return (
                PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices),
                self.permute_hidden(hidden, unsorted_indices),
            )
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = hidden.squeeze(1)
        return output, self.permute_hidden(hidden, unsorted_indices)


class RNNCell(nn.RNNCellBase):
    r"""An Elman RNN cell with tanh or ReLU, computed by rnnfast's fused cell op.

    Same constructor, parameters, initialisation, repr and semantics as
    :class:`torch.nn.RNNCell`::

        RNNCell(input_size, hidden_size, bias=True, nonlinearity='tanh', device=None, dtype=None)

    forward(input, hx=None) -> h': input (N, H_in) or (H_in,), hx (N, H) or (H,).
    """

    __constants__ = ["input_size", "hidden_size", "bias", "nonlinearity"]
    nonlinearity: str

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__(input_size, hidden_size, bias, num_chunks=1, **factory_kwargs)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        if input.dim() not in (1, 2):
            raise ValueError(f"RNNCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"RNNCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
        else:
            hx = hx.unsqueeze(0) if not is_batched else hx
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        ret = F_rnn.rnn_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih,
                             self.bias_hh, self.nonlinearity)
        if not is_batched:
            ret = ret.squeeze(0)
        return ret
