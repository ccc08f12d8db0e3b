"""The onnxruntime baseline of the forward (inference) timing: ``--ort``.

onnxruntime is the CPU runtime RNNs are deployed with, and its fused LSTM/GRU kernels are
fast at small shapes, so rnnfast's inference is also compared with it. For each float32
CPU forward row, the timed rnnfast module itself (same weights) is exported with
``torch.onnx.export(dynamo=False)`` (standard ONNX RNN / LSTM / GRU nodes, see
rnnfast/onnx.py) and loaded into an ``onnxruntime.InferenceSession``: CPU provider,
``intra_op_num_threads = torch.get_num_threads()``, one inter-op thread, sequential
execution, everything else at onnxruntime's defaults. Its outputs (output, h_n, and LSTM's
c_n) are checked against rnnfast's forward with the bench's float32 tolerance before
``session.run`` is timed, interleaved with torch and rnnfast in the same repeats.

Rows it does not apply to (forward+backward, dtypes other than float32, CUDA, LSTM's
proj_size, which ONNX's LSTM cannot express) get no onnxruntime number.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import torch

from .checks import TOLERANCES, _rel_err
from .configs import Config
from .workloads import Workload

__all__ = ["ORT", "TARGET_MIN", "TARGET_GEOMEAN", "require", "not_applicable", "session_options",
           "OrtBaseline"]

ORT = "onnxruntime"  # the candidate's name in the timing samples
# The inference issue's targets: rnnfast forward >= 1.0x onnxruntime at every shape of a
# cell, and >= 1.5x as the geometric mean over the shapes.
TARGET_MIN = 1.0
TARGET_GEOMEAN = 1.5


def require() -> dict[str, str]:
    """The versions of onnxruntime and onnx (the exporter writes with onnx); ImportError
    with what to install when either is missing."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"--ort needs the onnxruntime and onnx packages ({e}); install them "
                          "with `pip install onnxruntime onnx`") from None
    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}


def not_applicable(cfg: Config, dtype_name: str, device: str, mode: str) -> str | None:
    """Why the onnxruntime baseline does not apply to this row, or None when it does."""
    if mode != "fwd":
        return "onnxruntime is an inference runtime: forward only"
    if dtype_name != "float32":
        return "the onnxruntime baseline is float32 only"
    if device != "cpu":
        return "the onnxruntime baseline runs on the CPU only"
    if cfg.proj_size:
        return "ONNX's LSTM has no projection (proj_size)"
    if cfg.packed:
        return "the exported graph takes dense input (no PackedSequence)"
    return None


def session_options(threads: int) -> dict:
    """The settings of every session (recorded in the results)."""
    return {"providers": ["CPUExecutionProvider"], "intra_op_num_threads": threads,
            "inter_op_num_threads": 1, "execution_mode": "ORT_SEQUENTIAL",
            "allow_spinning": False}


class OrtBaseline:
    """wl's rnnfast module exported to ONNX and loaded into an onnxruntime session."""

    def __init__(self, wl: Workload):
        import onnxruntime

        self.output_names = ["output", "h_n"] + (["c_n"] if wl.cfg.cell == "lstm" else [])
        model = wl.models["rnnfast"]
        opts = session_options(torch.get_num_threads())
        with tempfile.TemporaryDirectory(prefix="rnnfast-bench-ort-") as folder:
            path = os.path.join(folder, f"{wl.cfg.slug}.onnx")
            with warnings.catch_warnings():
                # the exporter warns that dynamo=False is the legacy exporter and about
                # tracing the modules' Python checks; both are expected here
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (wl.x,), path, dynamo=False, input_names=["input"],
                                  output_names=self.output_names)
            so = onnxruntime.SessionOptions()
            so.intra_op_num_threads = opts["intra_op_num_threads"]
            so.inter_op_num_threads = opts["inter_op_num_threads"]
            so.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
            # No spinning between runs: its idle threads would take a core from the torch and
            # rnnfast runs interleaved with it.
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            # the session reads the file now; the folder can go afterwards
            self.session = onnxruntime.InferenceSession(path, so, providers=opts["providers"])
        self.feeds = {"input": wl.x.numpy()}

    def fn(self):
        """The timed callable: one session.run on the workload's input."""
        session, feeds = self.session, self.feeds
        return lambda: session.run(None, feeds)

    def check(self, wl: Workload) -> dict:
        """onnxruntime's outputs against rnnfast's forward, max-norm relative error, with
        the tolerance of the bench's own check for wl's dtype."""
        tol = TOLERANCES[wl.dtype]
        with torch.no_grad():
            out, state = wl.models["rnnfast"](wl.x)
        expected = [out, *(state if isinstance(state, tuple) else (state,))]
        got = self.session.run(None, self.feeds)
        errors, failures = {}, []
        for name, ref, value in zip(self.output_names, expected, got):
            errors[name] = _rel_err(torch.from_numpy(value), ref)
            if not errors[name] <= tol:
                failures.append(f"{name}: error {errors[name]:.2e} > {tol:.0e}")
        if len(got) != len(expected):
            failures.append(f"{len(got)} outputs, expected {len(expected)}")
        return {"ok": not failures, "tolerance": tol, "errors": errors, "failures": failures}
