"""Importing rnnfast never fails silently.

Without the compiled extension rnnfast._C, `import rnnfast` raises an ImportError that
says what is missing and how to build it; there is no silent slow fallback. A build for
another torch major.minor warns at import. Each case runs in a fresh interpreter on a
copy of the package in a temporary directory.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rnnfast

PKG = Path(rnnfast.__file__).parent
BUILD_HINTS = ("pip install --no-build-isolation -e .", "make build")

# An editable install (pip install -e .) adds a finder that would resolve rnnfast._C
# to the repository's copy; drop it so that only the package copy on PYTHONPATH counts.
PROBE = r"""
import sys, warnings
sys.meta_path = [f for f in sys.meta_path
                 if not getattr(f, "__module__", "").startswith("__editable__")]
warnings.simplefilter("always")
try:
    with warnings.catch_warnings(record=True) as caught:
        import rnnfast
except ImportError as e:
    print("IMPORT-ERROR")
    print(str(e))
    sys.exit(0)
import torch
print("IMPORTED", rnnfast.__file__)
print("HAS-OP", hasattr(torch.ops.rnnfast, "rnn_forward"))
for w in caught:
    print("WARNING", w.category.__name__, str(w.message))
"""


def _copy_package(dest: Path, with_so: bool, build_info: str | None) -> Path:
    """Copy rnnfast's Python files (and optionally the compiled _C) to dest/rnnfast."""
    pkg = dest / "rnnfast"
    pkg.mkdir(parents=True)
    for f in PKG.glob("*.py"):
        if f.name != "_build_info.py":
            shutil.copy(f, pkg / f.name)
    if with_so:
        for so in glob.glob(str(PKG / "_C*.so")) + glob.glob(str(PKG / "_C*.pyd")):
            shutil.copy(so, pkg)
    if build_info is not None:
        (pkg / "_build_info.py").write_text(build_info)
    return pkg


def _run_probe(root: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(root)
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _real_build_info() -> str:
    return (PKG / "_build_info.py").read_text()


@pytest.mark.parametrize("with_build_info", [True, False], ids=["built-elsewhere", "never-built"])
def test_import_without_compiled_extension_raises_with_build_command(tmp_path, with_build_info):
    """No rnnfast/_C*.so: ImportError naming rnnfast._C and the build command."""
    info = _real_build_info() if with_build_info else None
    _copy_package(tmp_path, with_so=False, build_info=info)
    out = _run_probe(tmp_path)
    assert out.startswith("IMPORT-ERROR"), out
    assert "rnnfast._C" in out
    assert any(hint in out for hint in BUILD_HINTS), out
    if with_build_info:
        assert "built for torch" in out
    else:
        assert "has not been built" in out


def test_import_warns_when_built_for_another_torch(tmp_path):
    """With its _C the package copy imports and registers torch.ops.rnnfast; a _build_info
    from another torch major.minor gives a RuntimeWarning with the rebuild command."""
    info = _real_build_info()
    info = "\n".join(
        "torch_version = '1.0.0'" if line.startswith("torch_version") else line
        for line in info.splitlines()
    )
    _copy_package(tmp_path, with_so=True, build_info=info)
    out = _run_probe(tmp_path)
    assert "IMPORTED" in out and str(tmp_path) in out, out
    assert "HAS-OP True" in out, out
    warnings = [line for line in out.splitlines() if line.startswith("WARNING RuntimeWarning")]
    assert warnings, out
    assert any(hint in warnings[0] for hint in BUILD_HINTS), out
