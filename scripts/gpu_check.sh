#!/usr/bin/env bash
# The GPU check of rnnfast, in one go on a CUDA machine with torch installed (no
# network needed):
#   build      RNNFAST_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 python setup.py build_ext --inplace
#   test       python -m pytest tests                 (the whole suite, CUDA tests included;
#              the CUDA files first; a file whose imports fail, e.g. hypothesis missing on an
#              offline machine, is reported as an error and the rest still runs)
#   sanitizer  compute-sanitizer memcheck, racecheck, synccheck over scripts/sanitizer_case.py
#   bench      python -m rnnfast.bench --set S --device cuda, for each S in GPU_BENCH_SETS
# Everything goes to one results folder: $OUT if set, else bench/results/gpu-<date>/:
#   summary.txt (machine, versions, each step's status and time), build.log, pytest.log,
#   sanitizer.log, bench-S.log and bench-S/ per set S (the benchmark's results.json/.md,
#   speedup.png).
#
#   scripts/gpu_check.sh                    (make gpu-check)
# Knobs:
#   PYTHON              interpreter with a CUDA build of torch (default python3)
#   GPU_CHECK_STEPS     comma-separated subset of build,test,sanitizer,bench,cmake
#                       (default build,test,sanitizer,bench; cmake = the CMake build with
#                       RNNFAST_WITH_CUDA=ON in cmake-build/cuda plus its smoke test,
#                       logged to cmake.log)
#   TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default: number of cores)
#   PYTEST_ARGS, BENCH_ARGS  extra arguments of pytest / the benchmark
#   GPU_BENCH_SETS      benchmark sets (default "gpu-persistent gpu")
#   GPU_TEST_PATHS      pytest paths (default: the two CUDA test files first, then tests/)
# The device tool allows 10 minutes per command: run build,test in one call and
# sanitizer,bench in the next (the in-place build stays while the machine is warm).
#   SANITIZER_TOOLS     (default "memcheck racecheck synccheck"); SANITIZER_ARGS extra
#                       compute-sanitizer options (e.g. a kernel-name filter)
#   TIMEOUT_BUILD, TIMEOUT_TEST, TIMEOUT_SANITIZER, TIMEOUT_BENCH  seconds per step
#                       (defaults 300, 420, 300, 420); a step that runs out is marked TIMEOUT
# Exit status: 0 when every step that ran passed, else 1. Steps after a failed build
# are skipped. Each step's log is written as it runs, so a run cut short still leaves
# its results.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PY=${PYTHON:-python3}
STEPS=",${GPU_CHECK_STEPS:-build,test,sanitizer,bench},"
RESULTS=${OUT:-bench/results/gpu-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
SUMMARY=$RESULTS/summary.txt
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

overall=0
say() { echo "$*" | tee -a "$SUMMARY"; }
want() { [[ "$STEPS" == *",$1,"* ]]; }

# run_step NAME LOG TIMEOUT CMD...: runs CMD with its output in LOG, records the result.
run_step() {
  local name=$1 log=$2 limit=$3
  shift 3
  local start rc status
  start=$(date +%s)
  echo "== $name: $*" | tee -a "$log" >/dev/null
  timeout --kill-after=20 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  case $rc in
    0) status=PASS ;;
    124|137) status="TIMEOUT after ${limit}s" ;;
    *) status="FAIL (exit $rc)" ;;
  esac
  [[ $rc -eq 0 ]] || overall=1
  say "$(printf '%-22s %-24s %5ss  %s' "$name" "$status" "$(( $(date +%s) - start ))" "$(basename "$log")")"
  return $rc
}

find_sanitizer() {
  local c
  for c in "$(command -v compute-sanitizer 2>/dev/null)" \
           "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" \
           /usr/local/cuda/bin/compute-sanitizer \
           /usr/local/cuda/compute-sanitizer/compute-sanitizer \
           /opt/nvidia/compute-sanitizer/compute-sanitizer; do
    [[ -n "$c" && -x "$c" ]] && { echo "$c"; return 0; }
  done
  return 1
}

# --- machine and versions ----------------------------------------------------------
{
  echo "rnnfast GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "repo: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "steps: ${STEPS:1:-1}; results: $RESULTS"
  echo "--- nvidia-smi"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1 || true
  echo "--- nvcc"
  nvcc --version 2>&1 | tail -n 2 || true
  echo "--- python / torch"
  "$PY" - <<'EOF' 2>&1
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cudnn", torch.backends.cudnn.version())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs,",
          round(p.total_memory / 2**30, 1), "GiB,", torch.cuda.device_count(), "device(s)")
else:
    print("torch sees no CUDA device")
EOF
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
  echo "--- results"
} >"$SUMMARY"
cat "$SUMMARY"

# --- build -------------------------------------------------------------------------
build_ok=1
if want build; then
  if ! run_step build "$RESULTS/build.log" "${TIMEOUT_BUILD:-300}" \
      env RNNFAST_CUDA=1 "$PY" setup.py build_ext --inplace; then
    build_ok=0
    tail -n 40 "$RESULTS/build.log"
  else
    "$PY" -c "import rnnfast, json; print('build_info', json.dumps(rnnfast.build_info()))" \
      >>"$SUMMARY" 2>&1 || true
  fi
fi

# --- tests -------------------------------------------------------------------------
if want test; then
  if [[ $build_ok -eq 1 ]]; then
    # shellcheck disable=SC2086
    run_step test "$RESULTS/pytest.log" "${TIMEOUT_TEST:-420}" \
      "$PY" -m pytest ${GPU_TEST_PATHS:-tests/test_cuda_persistent.py tests/test_cuda.py tests} -rfEs \
      -p no:cacheprovider --continue-on-collection-errors ${PYTEST_ARGS:-}
    grep -E '^(=+ .*(passed|failed|error).* =+|FAILED|ERROR)' "$RESULTS/pytest.log" \
      | tail -n 25 | sed 's/^/    /' | tee -a "$SUMMARY"
  else
    say "test                   SKIPPED (build failed)"
  fi
fi

# --- compute-sanitizer -------------------------------------------------------------
if want sanitizer; then
  if [[ $build_ok -eq 0 ]]; then
    say "sanitizer              SKIPPED (build failed)"
  elif ! SAN=$(find_sanitizer); then
    say "sanitizer              SKIPPED (compute-sanitizer not found)"
    overall=1
  else
    log=$RESULTS/sanitizer.log
    for tool in ${SANITIZER_TOOLS:-memcheck racecheck synccheck}; do
      # Without the caching allocator, memcheck sees each tensor's real bounds.
      # shellcheck disable=SC2086
      run_step "sanitizer-$tool" "$log" "${TIMEOUT_SANITIZER:-300}" \
        env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool "$tool" --error-exitcode 99 \
        --print-limit 50 ${SANITIZER_ARGS:-} "$PY" scripts/sanitizer_case.py
      grep -E "ERROR SUMMARY|RACECHECK SUMMARY|sanitizer_case: OK" "$log" | tail -n 2 \
        | sed 's/^/    /' | tee -a "$SUMMARY"
    done
  fi
fi

# --- benchmark ---------------------------------------------------------------------
if want bench; then
  if [[ $build_ok -eq 1 ]]; then
    for set in ${GPU_BENCH_SETS:-gpu-persistent gpu}; do
      # shellcheck disable=SC2086
      run_step "bench-$set" "$RESULTS/bench-$set.log" "${TIMEOUT_BENCH:-420}" \
        "$PY" -m rnnfast.bench --set "$set" --device cuda --out "$RESULTS/bench-$set" \
        --progress plain ${BENCH_ARGS:-}
      tail -n 40 "$RESULTS/bench-$set.log" | sed 's/^/    /' >>"$SUMMARY"
    done
  else
    say "bench                  SKIPPED (build failed)"
  fi
fi

# --- CMake build with CUDA (optional) ----------------------------------------------
if want cmake; then
  run_step cmake-cuda "$RESULTS/cmake.log" "${TIMEOUT_BUILD:-300}" \
    env CMAKE_BUILD_DIR=cmake-build/cuda CMAKE_JOBS="$MAX_JOBS" \
    CMAKE_ARGS="-DRNNFAST_WITH_CUDA=ON" scripts/cmake_check.sh "$PY"
fi

say "overall: $([[ $overall -eq 0 ]] && echo PASS || echo FAIL)"
exit $overall
