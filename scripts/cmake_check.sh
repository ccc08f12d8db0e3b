#!/usr/bin/env bash
# Configures, builds and runs the LibTorch (CMake) build of rnnfast: the same C++
# sources as setup.py, as a shared library without Python, plus the smoke program
# tests/cpp/smoke.cpp that calls rnnfast::rnn_forward on CPU.
#
#   scripts/cmake_check.sh PYTHON        (make cmake-check)
# PYTHON is the interpreter whose torch provides LibTorch (default: python3).
# Knobs: CMAKE_BUILD_DIR (default cmake-build), CMAKE_JOBS (default 2),
#        CMAKE_BUILD_TYPE (default Release), CMAKE_ARGS (extra configure arguments,
#        e.g. -DRNNFAST_WITH_CUDA=ON on a CUDA machine).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${1:-${PYTHON:-python3}}
BUILD_DIR=${CMAKE_BUILD_DIR:-cmake-build}
JOBS=${CMAKE_JOBS:-2}
PREFIX=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')

echo "cmake-check: torch from $PY ($PREFIX), build dir $BUILD_DIR"
# shellcheck disable=SC2086
cmake -S . -B "$BUILD_DIR" -DCMAKE_PREFIX_PATH="$PREFIX" \
  -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-Release}" ${CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j "$JOBS"
"$BUILD_DIR/rnnfast_smoke"
echo "cmake-check: OK"
