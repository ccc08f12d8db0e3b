"""Swap torch.nn's recurrent modules for rnnfast's in a model, and back.

    model = rnnfast.convert(model)      # every nn.RNN, LSTM, GRU and cell -> rnnfast
    model = rnnfast.to_torch(model)     # every rnnfast one -> torch.nn (for export)

The pairs: nn.RNN <-> rnnfast.RNN, nn.LSTM <-> LSTM, nn.GRU <-> GRU, nn.RNNCell <-> RNNCell,
nn.LSTMCell <-> LSTMCell, nn.GRUCell <-> GRUCell.

Each replaced module becomes a new module of the other class that takes over the
old one's state as is: the *same* Parameter objects (so an optimizer built before the
conversion keeps training the converted model), buffers, device, dtype, training
mode, hooks and attributes such as ``batch_first`` or ``dropout``. Nothing is copied,
re-initialised or moved, and no random numbers are drawn.

Rules:
  * Only modules whose class is exactly the source class are replaced (and the same
    class with a ``torch.nn.utils.parametrize`` parametrization such as weight_norm).
    A user subclass of nn.RNN (or nn.LSTM, ...) is left alone: its forward may rely on
    the torch class.
  * The model is changed in place, parents included; the (possibly new) root is
    returned, so always use the return value: ``model = rnnfast.convert(model)``.
  * A module shared by several parents is replaced by one shared new module.
  * The replaced modules are not changed: code that kept a reference to one still
    holds a working torch module (sharing its parameters with the new one).
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils import parametrize

from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__all__ = ["convert", "to_torch"]

_TO_RNNFAST = {
    nn.RNN: RNN, nn.LSTM: LSTM, nn.GRU: GRU,
    nn.RNNCell: RNNCell, nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell,
}
_TO_TORCH = {fused: torch_cls for torch_cls, fused in _TO_RNNFAST.items()}


def convert(model: nn.Module) -> nn.Module:
    """Replace every ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` / ``RNNCell`` / ``LSTMCell`` /
    ``GRUCell`` in ``model`` (the root included) by the rnnfast module of the same name,
    sharing its parameters.

    Returns the model, or the new module when the root itself was replaced.
    """
    return _swap(model, _TO_RNNFAST, {})


def to_torch(model: nn.Module) -> nn.Module:
    """The reverse of :func:`convert`: every rnnfast module (the root included) becomes
    the ``torch.nn`` module of the same name sharing its parameters, e.g. before
    exporting to a runtime that does not load rnnfast.

    Returns the model, or the new module when the root itself was replaced.
    """
    return _swap(model, _TO_TORCH, {})


def _target_class(module: nn.Module, mapping: dict) -> type | None:
    cls = type(module)
    if cls in mapping:
        return mapping[cls]
    # A parametrized module's class is a generated subclass "Parametrized<Name>" of
    # its original class (torch.nn.utils.parametrize._inject_new_class).
    if (
        parametrize.is_parametrized(module)
        and len(cls.__bases__) == 1
        and cls.__bases__[0] in mapping
        and cls.__name__ == f"Parametrized{cls.__bases__[0].__name__}"
    ):
        target = mapping[cls.__bases__[0]]
        # The same generated class over the target: its __dict__ holds the properties
        # of the parametrized tensors and the (de)serialisation overrides.
        extra = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
        return type(f"Parametrized{target.__name__}", (target,), extra)
    return None


def _replace(module: nn.Module, target: type) -> nn.Module:
    new = target.__new__(target)
    # Module state lives in __dict__: parameters, buffers, submodules, hooks, flags and
    # the RNN attributes, which both classes of each pair share. The containers are
    # copied (so the two modules stay independent); their contents are not.
    for key, value in vars(module).items():
        if isinstance(value, (dict, list, set)):
            value = copy.copy(value)
        new.__dict__[key] = value
    return new


def _swap(module: nn.Module, mapping: dict, memo: dict) -> nn.Module:
    if id(module) in memo:
        return memo[id(module)]
    target = _target_class(module, mapping)
    if target is not None:
        new = _replace(module, target)
        memo[id(module)] = new
        return new
    memo[id(module)] = module
    for name, child in list(module._modules.items()):
        if child is not None:
            module._modules[name] = _swap(child, mapping, memo)
    return module
