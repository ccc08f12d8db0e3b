"""The LibTorch (CMake) build: scripts/cmake_check.sh configures and builds
CMakeLists.txt in cmake-build/ against the running torch, then runs the C++ smoke
program (tests/cpp/smoke.cpp), which calls rnnfast::rnn_forward on CPU.
Takes about a minute on a 2-core machine (seconds when cmake-build/ is up to date)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cmake_build_and_smoke():
    assert shutil.which("cmake"), "cmake is required to test the LibTorch build"
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "cmake_check.sh"), sys.executable],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    assert "smoke: OK" in result.stdout, log[-6000:]
    assert "cmake-check: OK" in result.stdout, log[-6000:]
