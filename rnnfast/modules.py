"""Drop-in replacements for torch.nn.RNN, LSTM, GRU, RNNCell, LSTMCell and GRUCell.

``rnnfast.RNN``, ``LSTM`` and ``GRU`` subclass ``torch.nn.RNNBase`` (not ``nn.RNN``,
``nn.LSTM`` or ``nn.GRU``): they inherit torch's constructor validation, parameters,
initialisation RNG stream, state_dict, flat-weights machinery and repr, and they stay
traceable by torch.compile with fullgraph=True (dynamo graph-breaks on every
``isinstance(m, (nn.RNN, nn.GRU, nn.LSTM))``). The price: ``isinstance(m, torch.nn.LSTM)``
is False; ``isinstance(m, torch.nn.RNNBase)`` is True. The cells subclass
``torch.nn.RNNCellBase`` as torch's do.

The whole stack of RNN, LSTM and GRU is one call of ``rnnfast.functional._sequence``
(one op); a cell step is the same call with one time step and one layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, _VF, nn
from torch.nn.functional import linear
from torch.nn.utils.rnn import PackedSequence

from . import functional as F_rnn
from . import onnx as rnnfast_onnx

# The library is loaded by the package's __init__ before this module.
_cell_step_op = torch.ops.rnnfast.cell_step.default

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]


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


def _matmul_dtype_error(a: Tensor, b: Tensor) -> RuntimeError:
    return RuntimeError(
        f"mat1 and mat2 must have the same dtype, but got {_dtype_name(a.dtype)} and "
        f"{_dtype_name(b.dtype)}"
    )


def _exporting_to_onnx() -> bool:
    """True while torch.onnx.export traces the model, with either exporter (TorchScript: a
    jit trace; dynamo: a torch.export). The exporters cannot translate rnnfast's ops: then
    RNN, LSTM and GRU make their op call through rnnfast.onnx.sequence and the cells run
    torch.nn's cell forward on their own parameters (see rnnfast/onnx.py)."""
    # torch.onnx.is_in_onnx_export() costs microseconds, as much as a cell's whole Python
    # overhead: the cheap checks go first.
    if not (torch.compiler.is_exporting() or torch._C._get_tracing_state() is not None):
        return False
    if torch.onnx.is_in_onnx_export():
        return True
    # When torch.export's default (non-strict) capture fails, torch.onnx.export retries
    # with its strict one (dynamo), which folds is_in_onnx_export() to False; the flag that
    # function reads still tells. (Read defensively: it is private to torch.onnx.)
    exporter = getattr(torch.onnx._internal, "exporter", None)
    return bool(getattr(getattr(exporter, "_flags", None), "_is_onnx_exporting", False))


# ---------------------------------------------------------------------------
# RNN, LSTM, GRU
# ---------------------------------------------------------------------------


class _FusedRNNBase(nn.RNNBase):
    """The forward of RNN, LSTM and GRU: nn.RNN / nn.LSTM / nn.GRU.forward's pre- and
    post-processing step by step, with ATen's call replaced by one call of
    ``rnnfast.functional._sequence``.

    The hidden state is kept in torch's form (a tensor; for LSTM the tuple (h, c)) up to
    the call, which takes it as a list of states ([h] or [h, c]). The subclasses say how
    to make, check and unpack their form; each defines its own ``forward`` (so that
    argument errors name ``LSTM.forward`` etc., as torch's do) calling ``_forward``.
    """

    # The ValueError for an input that is not 2-D or 3-D; {} is the input's dim.
    _input_rank_message: str

    def _fused_mode(self) -> str:
        """The mode string of the op (nn.RNNBase's own)."""
        raise NotImplementedError

    def _zero_hidden(self, input: Tensor, batch_size):
        # As nn.RNN / nn.GRU: hidden_size wide (even with the positional proj_size quirk).
        num_directions = 2 if self.bidirectional else 1
        return torch.zeros(self.num_layers * num_directions, batch_size, self.hidden_size,
                           dtype=input.dtype, device=input.device)

    def _check_hidden_rank(self, hx, is_batched: bool):
        """hx against the input's rank; an unbatched input's hx gets its batch dim."""
        if not is_batched:
            if hx.dim() != 2:
                raise RuntimeError(
                    f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor"
                )
            return hx.unsqueeze(1)
        if hx.dim() != 3:
            raise RuntimeError(
                f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor"
            )
        return hx

    def _check_forward_args_compiling(self, input: Tensor, hx, batch_sizes: Tensor) -> None:
        # Packed input under torch.compile: to the compiler batch_sizes[0] is data, not a
        # size, and comparing hx's batch size with it would be a data-dependent guard (a
        # failed fullgraph trace). The kernel checks that one at run time; everything
        # else is checked here, with check_forward_args' messages.
        self.check_input(input, batch_sizes)
        num_directions = 2 if self.bidirectional else 1
        width = self.proj_size if self.proj_size > 0 else self.hidden_size
        self.check_hidden_size(hx, (self.num_layers * num_directions, hx.size(1), width))

    def _state_list(self, hx, input: Tensor, batch_sizes: Tensor | None) -> list[Tensor]:
        """The op's list of states from torch's form of hx (after its checks)."""
        return [hx]

    def _hidden_from_list(self, states: list[Tensor]):
        """torch's form of h_n from the op's list."""
        return states[0]

    def _check_devices_and_dtypes(self, input: Tensor, states: list[Tensor]) -> list[Tensor]:
        # The checks ATen runs, with its messages: devices (hidden states first, then
        # parameters), then the hx dtype (on CPU torch fails inside addmm).
        for state in states:
            if state.device != input.device:
                raise RuntimeError(
                    "Input and hidden tensors are not at the same device, found input tensor at "
                    f"{input.device} and hidden tensor at {state.device}"
                )
        for w in self._flat_weights:
            if w is not None and w.device != input.device:
                raise RuntimeError(
                    "Input and parameter tensors are not at the same device, found input tensor "
                    f"at {input.device} and parameter tensor at {w.device}"
                )
        if torch._C._is_any_autocast_enabled():
            return states  # functional casts them all to the autocast dtype
        if states[0].dtype != input.dtype:
            raise _matmul_dtype_error(states[0], input)
        if len(states) == 2 and states[1].dtype != input.dtype:
            # LSTM's c first meets f * c, which type-promotes in torch's generic LSTM:
            # a c that promotes to the input's dtype is accepted (cast here, the same
            # values), a wider one fails. (torch's oneDNN path rejects any other dtype.)
            c = states[1]
            if torch.promote_types(c.dtype, input.dtype) != input.dtype:
                raise _matmul_dtype_error(c, input)
            states = [states[0], c.to(input.dtype)]
        return states

    def _forward(self, input, hx=None):
        self._update_flat_weights()
        orig_input = input
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            is_batched = True
            if hx is None:
                hx = self._zero_hidden(input, batch_sizes[0])
            else:
                # hx is given in the caller's batch order; the packed rows are sorted.
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            batch_sizes = None
            if input.dim() not in (2, 3):
                raise ValueError(self._input_rank_message.format(input.dim()))
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            if hx is not None:
                hx = self._check_hidden_rank(hx, is_batched)
            sorted_indices = None
            unsorted_indices = None
            if hx is None:
                hx = self._zero_hidden(input, input.size(batch_dim))

        if batch_sizes is not None and torch.compiler.is_compiling():
            self._check_forward_args_compiling(input, hx, batch_sizes)
        else:
            self.check_forward_args(input, hx, batch_sizes)
        mode = self._fused_mode()
        states = self._state_list(hx, input, batch_sizes)
        states = self._check_devices_and_dtypes(input, states)

        sequence = F_rnn._sequence
        if _exporting_to_onnx():
            sequence = rnnfast_onnx.sequence  # the same call, as nodes ONNX exporters know
        output, h_n = sequence(
            mode,
            input,
            states,
            self._flat_weights,
            batch_sizes=batch_sizes,
            has_biases=self.bias,
            num_layers=self.num_layers,
            proj_size=self.proj_size,
            dropout=self.dropout,
            train=self.training,
            bidirectional=self.bidirectional,
            batch_first=self.batch_first if batch_sizes is None else False,
        )

        if isinstance(orig_input, PackedSequence):
            hidden = self._hidden_from_list(h_n)
            return (
                PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices),
                self.permute_hidden(hidden, unsorted_indices),
            )
        if not is_batched:
            output = output.squeeze(batch_dim)
            h_n = [h.squeeze(1) for h in h_n]
        return output, self._hidden_from_list(h_n)


class RNN(_FusedRNNBase):
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

    _input_rank_message = "RNN: Expected input to be 2D or 3D, got {}D tensor instead"

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

    def _fused_mode(self) -> str:
        # nn.RNN.forward asserts the mode (LSTM and GRU do not check theirs).
        if self.mode != "RNN_TANH" and self.mode != "RNN_RELU":
            raise AssertionError(f"mode must be RNN_TANH or RNN_RELU, got {self.mode}")
        return self.mode

    def forward(self, input, hx=None):
        return self._forward(input, hx)


class GRU(_FusedRNNBase):
    r"""Multi-layer GRU (torch's variant), computed by rnnfast's fused kernels.

    Same constructor, parameters, initialisation and forward semantics as
    :class:`torch.nn.GRU`::

        GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
            dropout=0.0, bidirectional=False, device=None, dtype=None)

    forward(input, hx=None) -> (output, h_n), shapes as :class:`RNN`. Gate rows are
    torch's [r | z | n], with n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
    Autocast as :class:`RNN` (torch's GRU returns float32 there: its state update mixes
    in the float32 hx).
    """

    _input_rank_message = "GRU: Expected input to be 2D or 3D, got {}D instead"

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)

    def _fused_mode(self) -> str:
        return "GRU"  # as nn.GRU, which runs a GRU whatever self.mode says

    def forward(self, input, hx=None):
        return self._forward(input, hx)


class LSTM(_FusedRNNBase):
    r"""Multi-layer LSTM, optionally with projections, computed by rnnfast's fused kernels.

    Same constructor, parameters (incl. ``weight_hr_l{k}`` with proj_size), initialisation
    and forward semantics as :class:`torch.nn.LSTM`::

        LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
             dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None)

    forward(input, hx=None) -> (output, (h_n, c_n))
        hx = (h_0, c_0): h (D * num_layers, N, P), c (D * num_layers, N, H), P = proj_size
        or H; unbatched without the N dim. output (L, N, D * P) (batch-first: (N, L, D * P)).

    Differences from nn.LSTM: a PackedSequence call gets the dense path's hx checks
    (torch's packed LSTM checks nothing in Python and fails in ATen with
    version-dependent texts); a c_0 of a narrower dtype than the input is accepted (as
    torch's generic path does; its default oneDNN path rejects it). Autocast as
    :class:`RNN`: everything runs in the autocast dtype (torch's oneDNN LSTM does too,
    but keeps c_n float32 with proj_size and crashes on float16 CPU autocast).
    """

    _input_rank_message = "LSTM: Expected input to be 2D or 3D, got {}D instead"

    # nn.LSTM's own plain methods: the same checks and messages ("Expected hidden[0]
    # size ...", "Expected hidden[1] size ...") and the permutation of both h and c.
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args  # type: ignore[assignment]
    permute_hidden = nn.LSTM.permute_hidden  # type: ignore[assignment]

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    def _fused_mode(self) -> str:
        return "LSTM"  # as nn.LSTM, which runs an LSTM whatever self.mode says

    def _zero_hidden(self, input: Tensor, batch_size):
        num_directions = 2 if self.bidirectional else 1
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        h_zeros = torch.zeros(self.num_layers * num_directions, batch_size, real_hidden_size,
                              dtype=input.dtype, device=input.device)
        c_zeros = torch.zeros(self.num_layers * num_directions, batch_size, self.hidden_size,
                              dtype=input.dtype, device=input.device)
        return (h_zeros, c_zeros)

    def _check_hidden_rank(self, hx, is_batched: bool):
        # nn.LSTM indexes hx[0] and hx[1] without checking that hx is a tuple.
        if is_batched:
            if hx[0].dim() != 3 or hx[1].dim() != 3:
                raise RuntimeError(
                    "For batched 3-D input, hx and cx should also be 3-D but got "
                    f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                )
            return hx
        if hx[0].dim() != 2 or hx[1].dim() != 2:
            raise RuntimeError(
                "For unbatched 2-D input, hx and cx should also be 2-D but got "
                f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
            )
        return (hx[0].unsqueeze(1), hx[1].unsqueeze(1))

    def _check_forward_args_compiling(self, input: Tensor, hx, batch_sizes: Tensor) -> None:
        # As the base class: all but the batch size against batch_sizes[0] (the kernel's).
        self.check_input(input, batch_sizes)
        num_directions = 2 if self.bidirectional else 1
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        batch = hx[0].size(1)
        self.check_hidden_size(hx[0], (self.num_layers * num_directions, batch, real_hidden_size),
                               "Expected hidden[0] size {}, got {}")
        self.check_hidden_size(hx[1], (self.num_layers * num_directions, batch, self.hidden_size),
                               "Expected hidden[1] size {}, got {}")

    def _state_list(self, hx, input: Tensor, batch_sizes: Tensor | None) -> list[Tensor]:
        if isinstance(hx, Tensor):
            # torch hands a tensor hx on to aten::lstm, whose argument parser rejects it
            # with a TypeError listing lstm's overloads: raise that very error (the call
            # fails while parsing its arguments; nothing runs).
            args = (hx, self._flat_weights, self.bias, self.num_layers, self.dropout,
                    self.training, self.bidirectional)
            if batch_sizes is None:
                _VF.lstm(input, *args, self.batch_first)
            else:
                _VF.lstm(input, batch_sizes, *args)
            raise TypeError("lstm(): argument 'hx' must be tuple of Tensors, not Tensor")
        if len(hx) != 2:
            raise RuntimeError("lstm expects two hidden states")
        return [hx[0], hx[1]]

    def _hidden_from_list(self, states: list[Tensor]):
        return (states[0], states[1])

    def forward(self, input, hx=None):
        return self._forward(input, hx)


# ---------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------

# ATen's cell checks (check_rnn_cell_forward_*), with its messages. input and the
# states are 2-D here, except a state of an unbatched call, which may be 3-D. The
# hidden size is read from weight_hh's second dim, as ATen does.


def _check_cell_input(input: Tensor, w_ih: Tensor) -> None:
    if input.size(1) != w_ih.size(1):
        raise RuntimeError(
            f"input has inconsistent input_size: got {input.size(1)} expected {w_ih.size(1)}"
        )


def _check_cell_weights(gates: int, w_ih: Tensor, w_hh: Tensor) -> None:
    hidden_size = w_hh.size(1)
    for name, w in (("weight_ih", w_ih), ("weight_hh", w_hh)):
        if w.size(0) != gates * hidden_size:
            raise RuntimeError(
                f"{name} first dim must be {gates} * hidden_size = {gates * hidden_size}, "
                f"but got {w.size(0)}"
            )


def _check_cell_hidden(input: Tensor, hx: Tensor, hidden_size: int, label: int) -> None:
    if input.size(0) != hx.size(0):
        raise RuntimeError(
            f"Input batch size {input.size(0)} doesn't match hidden{label} batch size {hx.size(0)}"
        )
    # A 1-D hx whose length is the batch size fails here with ATen's IndexError.
    if hx.size(1) != hidden_size:
        raise RuntimeError(
            f"hidden{label} has inconsistent hidden_size: got {hx.size(1)}, expected {hidden_size}"
        )


def _gated_broadcast_error(gates: int, hidden_size: int) -> RuntimeError:
    # An unbatched call whose hx was 2-D (B, H) with B == H passes ATen's checks as a
    # (1, H, H) state; torch's LSTM/GRU cell then fails broadcasting its (1, ., G*H)
    # gate chunks against an H-wide tensor.
    return RuntimeError(
        f"The size of tensor a ({gates * hidden_size}) must match the size of tensor b "
        f"({hidden_size}) at non-singleton dimension 2"
    )


def _cell_args_ok(input, hx, w_ih, w_hh, b_ih, b_hh, gates: int = 1) -> bool:
    """True when all of a cell's checks would pass: the common case, tested with a few
    attribute reads (a cell runs once per step, from Python). hx is a tensor, or the
    (h, c) of an LSTM cell."""
    states = hx if isinstance(hx, tuple) else (hx,)
    try:
        N, I = input.shape  # noqa: E741
        GH_ih, I_w = w_ih.shape
        GH, H = w_hh.shape
    except ValueError:  # not 2-D
        return False
    if not (I == I_w and GH_ih == GH == gates * H):
        return False
    if any(s.shape != (N, H) for s in states):
        return False
    dtype, device = input.dtype, input.device
    for t in (*states, w_ih, w_hh, b_ih, b_hh):
        if t is not None and (t.dtype != dtype or t.device != device):
            return False
    if (b_ih is None) != (b_hh is None):
        return False
    return all(b is None or b.shape == (GH,) for b in (b_ih, b_hh))


def _unsupported_cell_args(name: str, input, states, w_ih, w_hh, b_ih, b_hh) -> RuntimeError:
    tensors = [t for t in (input, *states, w_ih, w_hh, b_ih, b_hh) if t is not None]
    return RuntimeError(
        f"rnnfast.{name}: input, hx and the parameters must have one dtype and device and "
        "the parameters torch's shapes (both biases or none), got "
        + ", ".join(f"{list(t.shape)} {t.dtype} on {t.device}" for t in tensors)
    )


def _check_cell_sizes(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor) -> None:
    # ATen's rnn_tanh_cell / rnn_relu_cell checks, in its order.
    _check_cell_weights(1, w_ih, w_hh)
    _check_cell_input(input, w_ih)
    _check_cell_hidden(input, hx, w_hh.size(1), 0)


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
        if _exporting_to_onnx():
            return nn.RNNCell.forward(self, input, hx)
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
        if not torch.compiler.is_compiling():
            # The op checks the arguments itself (see _fast_cell_step); what it refuses
            # takes the checked path below.
            try:
                ret = F_rnn._rnn_cell_cast(input, hx, w_ih, w_hh, b_ih, b_hh, self.nonlinearity)
                return ret if is_batched else ret.squeeze(0)
            except RuntimeError:
                pass
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


def _cell_step(mode: str, input: Tensor, states: list[Tensor], w_ih, w_hh, b_ih, b_hh):
    """One step of an LSTM or GRU cell: one rnn_forward call with T = 1 and one layer;
    returns the new states [h'] or [h', c'], each (N, H). The tensors are already
    checked and cast (autocast) by the caller."""
    has_biases = b_ih is not None
    weights = [w_ih, w_hh, b_ih, b_hh] if has_biases else [w_ih, w_hh]
    if F_rnn._in_functorch_transform():
        _, h_n = F_rnn._sequence(
            mode, input.unsqueeze(0), [s.unsqueeze(0) for s in states], weights,
            batch_sizes=None, has_biases=has_biases, num_layers=1, proj_size=0, dropout=0.0,
            train=False, bidirectional=False, batch_first=False)
        return [h.squeeze(0) for h in h_n]
    # The op directly: a cell is called once per step, and _sequence's Python (autocast,
    # dropout, layout) has nothing to do here; cell_step is rnn_forward on 2-D tensors,
    # the views made in C++.
    return _cell_step_op(input, states, weights, mode,
                         F_rnn._keep_for_backward(input, states, weights))


def _fast_cell_step(mode: str, input: Tensor, states: list[Tensor], w_ih, w_hh, b_ih, b_hh):
    """_cell_step when the op accepts the arguments as they are, else None.

    A cell runs once per time step, and checking its arguments in Python first costs
    as much as the step at small sizes: the op checks them itself (the same sizes,
    dtypes and devices). Anything it refuses is left to the caller's checked path,
    which raises torch's own error or handles torch's quirks (broadcast, promotion).
    Traced (torch.compile) calls take the checked path."""
    if (b_ih is None) != (b_hh is None) or torch.compiler.is_compiling():
        return None
    try:
        return _cell_step(mode, input, states, w_ih, w_hh, b_ih, b_hh)
    except RuntimeError:
        return None


class LSTMCell(nn.RNNCellBase):
    r"""An LSTM cell, computed by rnnfast's fused kernels (one op call per step).

    Same constructor, parameters, initialisation, repr and semantics as
    :class:`torch.nn.LSTMCell`::

        LSTMCell(input_size, hidden_size, bias=True, device=None, dtype=None)

    forward(input, hx=None) -> (h', c'): input (N, H_in) or (H_in,), hx = (h, c), each
    (N, H) or (H,). Errors (types and messages) are nn.LSTMCell's. A c of another dtype
    is accepted as torch accepts it (the step runs in the input's dtype with c cast to
    it; both results come back in the promoted dtype, as torch's do). Autocast as
    :class:`RNN` (torch's LSTMCell returns float32 there).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 device=None, dtype=None) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__(input_size, hidden_size, bias, num_chunks=4, **factory_kwargs)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, Tensor]:
        if _exporting_to_onnx():
            return nn.LSTMCell.forward(self, input, hx)
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            # nn.LSTMCell iterates hx: a plain tensor hx passes here (its rows are checked).
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(
                        f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead"
                    )
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype,
                                device=input.device)
            hx = (zeros, zeros)
        elif not is_batched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        # What aten::lstm_cell's argument parser and its first check reject.
        if isinstance(hx, Tensor):
            raise TypeError("lstm_cell(): argument 'hx' (position 2) must be tuple of Tensors, "
                            "not Tensor")
        if len(hx) != 2:
            raise RuntimeError("lstm_cell expects two hidden states")
        input, h, c, w_ih, w_hh, b_ih, b_hh = F_rnn._autocast(
            input, hx[0], hx[1], self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        )
        states = _fast_cell_step("LSTM", input, [h, c], w_ih, w_hh, b_ih, b_hh)
        if states is not None:
            h1, c1 = states
            return (h1, c1) if is_batched else (h1.squeeze(0), c1.squeeze(0))
        out_dtype = input.dtype
        broadcast = False
        if not _cell_args_ok(input, (h, c), w_ih, w_hh, b_ih, b_hh, gates=4):
            # aten::lstm_cell's order: input size, weights, hidden0 (h), hidden1 (c).
            hidden_size = w_hh.size(1)
            _check_cell_input(input, w_ih)
            _check_cell_weights(4, w_ih, w_hh)
            _check_cell_hidden(input, h, hidden_size, 0)
            _check_cell_hidden(input, c, hidden_size, 1)
            if h.dim() == 3:
                raise _gated_broadcast_error(4, hidden_size)
            # Dtype, device and bias-shape mismatches: run torch's CPU cell ops in its
            # order (h side, x side, then f * c) to raise torch's own error.
            with torch.no_grad():
                gates = linear(h, w_hh, b_hh).add_(linear(input, w_ih, b_ih))
                gates.chunk(4, 1)[1] * c
            if c.dtype != input.dtype:
                # torch promotes in f * c and everything after it.
                out_dtype = torch.promote_types(input.dtype, c.dtype)
                c = c.to(input.dtype)
            if c.dim() == 3:
                # torch quirk: an unbatched call with a (B, H) c (B == H) broadcasts the
                # gates over c's rows and returns (B, H) results, unsqueezed.
                broadcast = True
                c = c[0]
                input = input.expand(c.size(0), -1)
                h = h.expand(c.size(0), -1)
            if not _cell_args_ok(input, (h, c), w_ih, w_hh, b_ih, b_hh, gates=4):
                raise _unsupported_cell_args("LSTMCell", input, (h, c), w_ih, w_hh, b_ih, b_hh)
        h1, c1 = _cell_step("LSTM", input, [h, c], w_ih, w_hh, b_ih, b_hh)
        if out_dtype != h1.dtype:
            h1, c1 = h1.to(out_dtype), c1.to(out_dtype)
        if not is_batched and not broadcast:
            h1, c1 = h1.squeeze(0), c1.squeeze(0)
        return h1, c1


class GRUCell(nn.RNNCellBase):
    r"""A GRU cell (torch's variant), computed by rnnfast's fused kernels (one op call
    per step).

    Same constructor, parameters, initialisation, repr and semantics as
    :class:`torch.nn.GRUCell`::

        GRUCell(input_size, hidden_size, bias=True, device=None, dtype=None)

    forward(input, hx=None) -> h': input (N, H_in) or (H_in,), hx (N, H) or (H,).
    Errors (types and messages) are nn.GRUCell's. Autocast as :class:`RNN` (torch's
    GRUCell returns float32 there).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 device=None, dtype=None) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__(input_size, hidden_size, bias, num_chunks=3, **factory_kwargs)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        if _exporting_to_onnx():
            return nn.GRUCell.forward(self, input, hx)
        if input.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
        elif not is_batched:
            hx = hx.unsqueeze(0)
        input, hx, w_ih, w_hh, b_ih, b_hh = F_rnn._autocast(
            input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        )
        states = _fast_cell_step("GRU", input, [hx], w_ih, w_hh, b_ih, b_hh)
        if states is not None:
            return states[0] if is_batched else states[0].squeeze(0)
        if not _cell_args_ok(input, hx, w_ih, w_hh, b_ih, b_hh, gates=3):
            # aten::gru_cell's order: input size, hidden0, then the weights.
            hidden_size = w_hh.size(1)
            _check_cell_input(input, w_ih)
            _check_cell_hidden(input, hx, hidden_size, 0)
            _check_cell_weights(3, w_ih, w_hh)
            if hx.dim() == 3:
                raise _gated_broadcast_error(3, hidden_size)
            # Dtype, device and bias-shape mismatches: torch's CPU cell ops in its order.
            with torch.no_grad():
                linear(input, w_ih, b_ih)
                linear(hx, w_hh, b_hh)
            raise _unsupported_cell_args("GRUCell", input, (hx,), w_ih, w_hh, b_ih, b_hh)
        (h1,) = _cell_step("GRU", input, [hx], w_ih, w_hh, b_ih, b_hh)
        return h1 if is_batched else h1.squeeze(0)
