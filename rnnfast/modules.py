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


_ATEN_DTYPE_NAMES = {
    torch.float32: "Float", torch.float64: "Double", torch.float16: "Half",
    torch.bfloat16: "BFloat16", torch.int64: "Long", torch.int32: "Int", torch.int16: "Short",
    torch.int8: "Char", torch.uint8: "Byte", torch.bool: "Bool",
    torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
    torch.complex32: "ComplexHalf",
}


def _dtype_name(dtype: torch.dtype) -> str:
    # ATen's ScalarType names, as they appear in torch's own matmul error messages.
    return _ATEN_DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


class RNN(nn.RNNBase):
    r"""Multi-layer Elman RNN with tanh or ReLU, computed by rnnfast's fused kernels.

    Same constructor, parameters, initialisation and forward semantics as
    :class:`torch.nn.RNN`::

        RNN(input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True,
            batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None)

    forward(input, hx=None) -> (output, h_n)
        input: (L, N, H_in), (N, L, H_in) with batch_first, (L, H_in) unbatched, or a
        PackedSequence. hx: (D * num_layers, N, H) or (D * num_layers, H); never batch-first.

    Under ``torch.autocast`` (any device) input, hx and the weights are cast to the
    autocast dtype, as autocast casts nn.RNN's linears, and the kernels run in that
    dtype with float32 accumulation; float64 tensors are left alone.
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

        if batch_sizes is not None and torch.compiler.is_compiling():
            # To the compiler batch_sizes[0] is data, not a size: comparing hx's batch
            # size with it would be a data-dependent guard (a failed fullgraph trace).
            # The kernel checks that one at run time; everything else is checked here.
            self.check_input(input, batch_sizes)
            self.check_hidden_size(
                hx, (self.num_layers * num_directions, hx.size(1), self.hidden_size)
            )
        else:
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


def _check_cell_sizes(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor) -> None:
    # ATen's rnn_tanh_cell / rnn_relu_cell checks, in its order and words (input and hx
    # are 2-D here). The hidden size is read from weight_hh, as ATen does.
    hidden_size = w_hh.size(1)
    if w_ih.size(0) != hidden_size:
        raise RuntimeError(
            f"weight_ih first dim must be 1 * hidden_size = {hidden_size}, but got {w_ih.size(0)}"
        )
    if w_hh.size(0) != hidden_size:
        raise RuntimeError(
            f"weight_hh first dim must be 1 * hidden_size = {hidden_size}, but got {w_hh.size(0)}"
        )
    if input.size(1) != w_ih.size(1):
        raise RuntimeError(
            f"input has inconsistent input_size: got {input.size(1)} expected {w_ih.size(1)}"
        )
    if input.size(0) != hx.size(0):
        raise RuntimeError(
            f"Input batch size {input.size(0)} doesn't match hidden0 batch size {hx.size(0)}"
        )
    if hx.size(1) != w_hh.size(0):
        raise RuntimeError(
            f"hidden0 has inconsistent hidden_size: got {hx.size(1)}, expected {w_hh.size(0)}"
        )


def _cell_args_ok(input, hx, w_ih, w_hh, b_ih, b_hh) -> bool:
    """True when _check_cell_sizes and _check_cell_tensors would both pass: the common
    case, tested with a few attribute reads (a cell runs once per step, from Python)."""
    try:
        N, I = input.shape  # noqa: E741
        N_hx, H = hx.shape
        H_ih, I_w = w_ih.shape
        H_hh, H_w = w_hh.shape
    except ValueError:  # not 2-D
        return False
    if not (N == N_hx and I == I_w and H == H_ih == H_hh == H_w):
        return False
    dtype, device = input.dtype, input.device
    for t in (hx, w_ih, w_hh, b_ih, b_hh):
        if t is not None and (t.dtype != dtype or t.device != device):
            return False
    return all(b is None or b.shape == (H,) for b in (b_ih, b_hh))


def _check_cell_tensors(input, hx, w_ih, w_hh, b_ih, b_hh) -> None:
    # nn.RNNCell has no dtype, device or bias-shape check of its own: a mismatch
    # surfaces from the first of its two linears, linear(hx, w_hh, b_hh) then
    # linear(input, w_ih, b_ih). Run those (only on a mismatch) to raise torch's error.
    tensors = [t for t in (input, hx, w_ih, w_hh, b_ih, b_hh) if t is not None]
    H = w_hh.size(0)
    if (
        all(t.dtype == input.dtype and t.device == input.device for t in tensors)
        and all(b is None or b.shape == (H,) for b in (b_ih, b_hh))
        and hx.size(-1) == w_hh.size(1)
    ):
        return
    torch.nn.functional.linear(hx, w_hh, b_hh)
    torch.nn.functional.linear(input, w_ih, b_ih)
    raise RuntimeError(
        "rnnfast.RNNCell: input, hx and the parameters must have one dtype and device, got "
        + ", ".join(f"{t.dtype} on {t.device}" for t in tensors)
    )


class RNNCell(nn.RNNCellBase):
    r"""An Elman RNN cell with tanh or ReLU, computed by rnnfast's fused cell op.

    Same constructor, parameters, initialisation, repr and semantics as
    :class:`torch.nn.RNNCell`::

        RNNCell(input_size, hidden_size, bias=True, nonlinearity='tanh', device=None, dtype=None)

    forward(input, hx=None) -> h': input (N, H_in) or (H_in,), hx (N, H) or (H,).
    Errors (types and messages) are nn.RNNCell's; autocast behaves as for :class:`RNN`.
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
        # The tensors the kernel sees: under autocast, cast as nn.RNNCell's linears are
        # (casting changes no size, so the size checks see what nn.RNNCell's see).
        input, hx, w_ih, w_hh, b_ih, b_hh = F_rnn._autocast(
            input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        )
        if not _cell_args_ok(input, hx, w_ih, w_hh, b_ih, b_hh):
            _check_cell_sizes(input, hx, w_ih, w_hh)
            _check_cell_tensors(input, hx, w_ih, w_hh, b_ih, b_hh)
        # torch quirk, kept for drop-in parity: an unbatched input with a 2-D hx (B, H)
        # (which passed the checks above only if B == H) is broadcast over hx's rows,
        # and the (B, H) result is returned as is.
        broadcast = hx.dim() == 3
        if broadcast:
            hx = hx[0]
            input = input.expand(hx.size(0), -1)
        ret = F_rnn._rnn_cell_cast(input, hx, w_ih, w_hh, b_ih, b_hh, self.nonlinearity)
        if not is_batched and not broadcast:
            ret = ret.squeeze(0)
        return ret
