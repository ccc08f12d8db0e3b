"""Correctness guard: no speed is reported for a configuration rnnfast gets wrong.

Before a configuration is timed, rnnfast and torch (nn.RNN, nn.LSTM or nn.GRU; same
weights, through state_dict) run on its exact shapes and dtype, and both are compared
with a float64 torch module of the same class holding the same (dtype-rounded)
weights. rnnfast passes when its error is within the dtype's tolerance, or within 4x
torch's own error at that dtype (low precision, TF32 on GPU). Compared: the output,
h_n (and LSTM's c_n), and for fwd+bwd the gradients of the input and of every
parameter. The error of a tensor is max|a - ref| / max|ref| (a max-norm relative
error), so it is comparable across shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .configs import Config
from .workloads import Workload, make_model, output_data

__all__ = ["TOLERANCES", "CheckResult", "check_workload", "probe_dtype"]

TOLERANCES = {
    torch.float64: 1e-9,
    torch.float32: 1e-4,
    torch.float16: 5e-3,
    torch.bfloat16: 2e-2,
}
TORCH_ERROR_FACTOR = 4.0


@dataclass
class CheckResult:
    ok: bool
    grads_checked: bool
    tolerance: float
    # name -> (rnnfast error, torch error); errors relative to the float64 oracle
    errors: dict[str, tuple[float, float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    error: str | None = None  # an exception raised by rnnfast, if any

    @property
    def worst(self) -> float:
        return max((e for e, _ in self.errors.values()), default=math.nan)

    def summary(self) -> str:
        if self.error:
            return f"rnnfast raised: {self.error}"
        if self.ok:
            return f"ok (max error {self.worst:.2e}, tolerance {self.tolerance:.0e})"
        return "WRONG RESULT: " + "; ".join(self.failures)

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "grads_checked": self.grads_checked,
            "tolerance": self.tolerance,
            "torch_error_factor": TORCH_ERROR_FACTOR,
            "max_error": None if math.isnan(self.worst) else self.worst,
            "errors": {k: {"rnnfast": a, "torch": b} for k, (a, b) in self.errors.items()},
            "failures": self.failures,
            "error": self.error,
        }


def _rel_err(a: torch.Tensor | None, ref: torch.Tensor | None) -> float:
    if a is None or ref is None:
        return 0.0 if a is None and ref is None else math.inf
    if a.shape != ref.shape:
        return math.inf
    a = a.detach().double()
    ref = ref.detach().double()
    diff = (a - ref).abs()
    if not bool(torch.isfinite(diff).all()):
        return math.inf
    if diff.numel() == 0:
        return 0.0
    return float(diff.max()) / max(float(ref.abs().max()), 1e-6)


def _final_states(state) -> dict[str, torch.Tensor]:
    """h_n, and c_n for an LSTM (whose final state is the tuple (h_n, c_n))."""
    if isinstance(state, tuple):
        h_n, c_n = state
        return {"h_n": h_n.detach(), "c_n": c_n.detach()}
    return {"h_n": state.detach()}


def _run(model, x, gout, with_grads, pack=lambda x: x):
    if not with_grads:
        with torch.no_grad():
            out, state = model(pack(x))
        return {"output": output_data(out), **_final_states(state)}
    x = x.detach().clone().requires_grad_(True)
    for p in model.parameters():
        p.grad = None
    out, state = model(pack(x))
    output_data(out).backward(gout)
    res = {"output": output_data(out).detach(), **_final_states(state), "grad_input": x.grad}
    for name, p in model.named_parameters():
        res[f"grad_{name}"] = p.grad
    return res


def check_workload(wl: Workload, with_grads: bool) -> CheckResult:
    """Compare wl's rnnfast model (and, for scale, its torch model) with a float64 oracle."""
    tol = TOLERANCES.get(wl.dtype, 1e-2)
    oracle = make_model("torch", wl.cfg, device=wl.device, dtype=torch.float64)
    oracle.load_state_dict({k: v.double() for k, v in wl.state.items()})
    ref = _run(oracle, wl.x.double(), wl.gout.double(), with_grads, wl.pack)
    got_torch = _run(wl.models["torch"], wl.x, wl.gout, with_grads, wl.pack)
    result = CheckResult(ok=True, grads_checked=with_grads, tolerance=tol)
    try:
        got = _run(wl.models["rnnfast"], wl.x, wl.gout, with_grads, wl.pack)
    except Exception as e:  # noqa: BLE001 - reported, never swallowed silently
        result.ok = False
        result.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return result
    for name, r in ref.items():
        e_fast = _rel_err(got.get(name), r)
        e_torch = _rel_err(got_torch.get(name), r)
        result.errors[name] = (e_fast, e_torch)
        bound = max(tol, TORCH_ERROR_FACTOR * e_torch)
        if not e_fast <= bound:
            result.ok = False
            result.failures.append(
                f"{name}: error {e_fast:.2e} > {bound:.1e} (torch's error {e_torch:.1e})"
            )
    for m in wl.models.values():
        for p in m.parameters():
            p.grad = None
    return result


def probe_dtype(impl: str, dtype: torch.dtype, device: torch.device | str,
                cell: str = "rnn") -> str | None:
    """None if impl runs the cell's forward+backward in dtype on device, else the error
    as "ExceptionType: first line of the message"."""
    cfg = Config(3, 2, 4, 5, cell=cell)
    try:
        m = make_model(impl, cfg, device=device, dtype=dtype)
        x = torch.randn(cfg.T, cfg.B, cfg.I, device=device, dtype=dtype, requires_grad=True)
        out, _ = m(x)
        out.sum().backward()
        with torch.no_grad():
            m(x)
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"{type(e).__name__}: {msg}"
    return None
