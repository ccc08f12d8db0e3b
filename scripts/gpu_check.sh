#!/usr/bin/env bash
# The GPU check of rnnfast: ONE device call (`make gpu-check`, $OUT set by the device
# tool, run's timeout_s=540) that builds, tests, benchmarks and memchecks on a CUDA
# machine with torch installed (no network needed), in <= 8 minutes on an H200 with 16
# cores. Steps, in order, with their predicted duration on that machine (estimates
# before the first GPU run; the summary prints predicted next to measured) and their
# default limit:
#
#   step                  predicted  limit  what
#   (machine probe)           10 s    30 s  nvidia-smi, nvcc (5 s each), torch versions (20 s)
#   build                    120 s   180 s  RNNFAST_CUDA=1 python setup.py build_ext --inplace,
#                                           sm_90 only (TORCH_CUDA_ARCH_LIST=9.0, MAX_JOBS=16)
#   test                      75 s    90 s  python -m pytest tests/test_cuda*.py (CUDA files
#                                           only; the CPU suite and test_cuda_compile.py, nvcc
#                                           without a GPU, are CI's job)
#   bench-gpu                 55 s    60 s  python -m rnnfast.bench --set gpu --device cuda
#                                           --cell all, reduced repeats (BENCH_REDUCED)
#   bench-gpu-persistent      50 s    60 s  the same with --set gpu-persistent
#   memcheck-step             20 s    40 s  compute-sanitizer --tool memcheck on
#                                           scripts/sanitizer_case.py --path step
#   memcheck-persistent       20 s    40 s  the same with --path persistent
#   total                   ~350 s   500 s  (TIMEOUT_TOTAL; the limits add up to 500 s)
#
# LSTM and GRU run on CUDA (per-step path; the persistent kernels are Elman-only): the
# test step runs their cases in tests/test_cuda.py (reference, cuDNN, 16-bit, packed,
# bidirectional, dropout, determinism, NaN-poisoned memory, CUDA graphs, T=100,000),
# the benchmark measures all three cells (the gpu-persistent set's LSTM/GRU rows are
# the per-step path) and sanitizer_case.py memchecks a small LSTM and GRU on both
# paths. The test and bench predictions above are estimates made before their first
# GPU run with LSTM/GRU kernels, close to their limits: raise TIMEOUT_TEST /
# TIMEOUT_BENCH if a first run shows they need it.
#
# The optional second call (GPU_CHECK_CALL=2, racecheck and synccheck, right after the
# first while the machine is warm, so that the build is incremental):
#   (machine probe)           10 s    30 s
#   build                      5 s   180 s  incremental on the warm machine (120 s if fresh)
#   racecheck-step            30 s    80 s  compute-sanitizer --tool racecheck, --path step
#   racecheck-persistent      30 s    80 s
#   synccheck-step            20 s    60 s  compute-sanitizer --tool synccheck
#   synccheck-persistent      20 s    60 s
#   total                   ~115 s   490 s  (~230 s on a fresh machine)
#
# What comes back in $OUT (at most 8 files, 2 folders deep; here exactly 2 files):
#   summary.txt   machine, versions, one line per step (status, seconds, predicted, limit),
#                 the key lines of each step's log, the overall status
#   logs.tar.gz   every log and result: build.log, test.log, bench-<set>.log and
#                 bench-<set>/ (results.json, results.md, speedup.png),
#                 <tool>-<path>.log, build_info.txt. Rewritten after every step, so a
#                 run cut short still brings back what finished; the running step's log
#                 sits in $OUT as <step>.log until it ends.
# Without $OUT the results go to bench/results/gpu-<date>/.
#
# Knobs (environment):
#   PYTHON              interpreter with a CUDA build of torch (default python3)
#   GPU_CHECK_CALL      1 (default: the steps above) or 2 (racecheck and synccheck)
#   GPU_CHECK_STEPS     comma-separated steps to run instead of GPU_CHECK_CALL's; names:
#                       build, test, bench-gpu, bench-gpu-persistent, memcheck-step,
#                       memcheck-persistent, racecheck-step, racecheck-persistent,
#                       synccheck-step, synccheck-persistent, cmake (the CMake build with
#                       RNNFAST_WITH_CUDA=ON plus its smoke test; off by default), and the
#                       groups bench (both sets), sanitizer (memcheck on both paths)
#   TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default 16)
#   GPU_TEST_PATHS      pytest paths (default: tests/test_cuda*.py but test_cuda_compile.py)
#   PYTEST_ARGS         extra pytest arguments (e.g. "-k persistent -x")
#   GPU_BENCH_SETS      benchmark sets (default "gpu gpu-persistent")
#   BENCH_REDUCED       the reduced repeats (default "--repeats 2 --max-repeats 3
#                       --budget 0 --warmup 1"; set it empty for the sets' own defaults)
#   BENCH_ARGS          extra benchmark arguments (after BENCH_REDUCED, so they win)
#   SANITIZER_ARGS      extra compute-sanitizer options (e.g. a kernel-name filter)
#   TIMEOUT_BUILD, TIMEOUT_TEST, TIMEOUT_BENCH (each set), TIMEOUT_SANITIZER (each
#   memcheck step), TIMEOUT_RACECHECK, TIMEOUT_SYNCCHECK, TIMEOUT_CMAKE   seconds per step
#                       (defaults 180, 90, 60, 40, 80, 60, 180); a step that runs out is
#                       marked TIMEOUT
#   TIMEOUT_TOTAL       seconds for the whole run (default 500): a step gets at most what
#                       is left of it, and is SKIPPED when under 5 s are left, so the run
#                       ends inside the device tool's 10 minutes even with raised limits
#   GPU_CHECK_DRY_RUN=1 a CPU dry run (no nvcc, torch or GPU needed): every step runs a
#                       fake in place of its command (scripts/gpu_check.sh --fake-step,
#                       which prints the real command line and fakes its outputs), and all
#                       the plumbing around it is real: sequencing, limits, logs, statuses,
#                       summary.txt, the archive, the $OUT layout check. For its tests:
#                       GPU_CHECK_DRY_FAIL / GPU_CHECK_DRY_SLOW / GPU_CHECK_DRY_NOSAN =
#                       comma-separated steps whose fake fails / sleeps 60 s / answers as
#                       compute-sanitizer does on a machine it does not support
#
# Statuses: PASS, FAIL (exit N), TIMEOUT after Ns, UNAVAILABLE (compute-sanitizer does not
# support the machine, as on gVisor), SKIPPED (why). Overall: PASS (every selected step
# passed), FAIL (one failed or timed out; exit 1), INCOMPLETE (none failed, but a selected
# step was SKIPPED or UNAVAILABLE; exit 2). Steps after a build that did not pass are
# skipped.
set -uo pipefail

# --- the dry run's fake of one step (scripts/gpu_check.sh --fake-step NAME CMD...) --
if [[ "${1:-}" == "--fake-step" ]]; then
  name=$2
  shift 2
  echo "dry run: would run: $*"
  listed() { [[ ",$1," == *",$name,"* ]]; }
  if listed "${GPU_CHECK_DRY_SLOW:-}"; then sleep 60; fi
  if listed "${GPU_CHECK_DRY_NOSAN:-}"; then
    echo "========= COMPUTE-SANITIZER"
    echo "========= Error: Device not supported"
    exit 255
  fi
  case $name in
    test) echo "========== 26 passed in 0.01s (dry run) ==========" ;;
    bench-*)
      # The benchmark's --out folder gets the files it would write.
      out=""
      while [[ $# -gt 0 ]]; do
        [[ "$1" == "--out" ]] && out=$2
        shift
      done
      mkdir -p "$out"
      echo '{"dry_run": true}' >"$out/results.json"
      echo "| dry run | no timings |" >"$out/results.md"
      echo "summary: dry run, nothing timed"
      ;;
    memcheck-*|racecheck-*|synccheck-*)
      echo "sanitizer_case: OK (dry run)"
      echo "========= ERROR SUMMARY: 0 errors"
      ;;
  esac
  if listed "${GPU_CHECK_DRY_FAIL:-}"; then
    echo "dry run: failing $name as asked (GPU_CHECK_DRY_FAIL)"
    exit 1
  fi
  exit 0
fi

SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PY=${PYTHON:-python3}
DRY=${GPU_CHECK_DRY_RUN:-0}
[[ "$DRY" == "1" ]] || DRY=0
START=$(date +%s)
DEADLINE=$(( START + ${TIMEOUT_TOTAL:-500} ))
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}

case ${GPU_CHECK_CALL:-1} in
  1) DEFAULT_STEPS=build,test,bench-gpu,bench-gpu-persistent,memcheck-step,memcheck-persistent ;;
  2) DEFAULT_STEPS=build,racecheck-step,racecheck-persistent,synccheck-step,synccheck-persistent ;;
  *) echo "gpu_check: GPU_CHECK_CALL must be 1 or 2, not '${GPU_CHECK_CALL}'" >&2; exit 2 ;;
esac
BENCH_SETS=(${GPU_BENCH_SETS:-gpu gpu-persistent})
BENCH_REDUCED_ARGS=${BENCH_REDUCED-"--repeats 2 --max-repeats 3 --budget 0 --warmup 1"}
# Expand the groups of GPU_CHECK_STEPS (bench, sanitizer) into step names.
STEPS=","
IFS=',' read -r -a REQUESTED <<<"${GPU_CHECK_STEPS:-$DEFAULT_STEPS}"
for s in "${REQUESTED[@]}"; do
  case $s in
    bench) for set in "${BENCH_SETS[@]}"; do STEPS+="bench-$set,"; done ;;
    sanitizer) STEPS+="memcheck-step,memcheck-persistent," ;;
    "") ;;
    *) STEPS+="$s," ;;
  esac
done
want() { [[ "$STEPS" == *",$1,"* ]]; }

# Every possible step, in run order: the summary lists each one with a status.
ALL_STEPS=(build test)
for set in "${BENCH_SETS[@]}"; do ALL_STEPS+=("bench-$set"); done
ALL_STEPS+=(memcheck-step memcheck-persistent racecheck-step racecheck-persistent
            synccheck-step synccheck-persistent cmake)
for s in "${REQUESTED[@]}"; do
  case $s in bench|sanitizer|"") ;; *)
    known=0
    for a in "${ALL_STEPS[@]}"; do [[ "$a" == "$s" ]] && known=1; done
    [[ $known -eq 1 ]] || { echo "gpu_check: unknown step '$s' in GPU_CHECK_STEPS" >&2; exit 2; } ;;
  esac
done

# Predicted seconds and default limits, as in the header.
predicted() {
  case $1 in
    build) echo 120 ;;  # a fresh machine; an incremental rebuild on a warm one takes ~5 s
    test) echo 75 ;; bench-gpu) echo 55 ;; bench-*) echo 50 ;;
    memcheck-*) echo 20 ;; racecheck-*) echo 30 ;; synccheck-*) echo 20 ;; cmake) echo 150 ;;
  esac
}
limit_of() {
  case $1 in
    build) echo "${TIMEOUT_BUILD:-180}" ;; test) echo "${TIMEOUT_TEST:-90}" ;;
    bench-*) echo "${TIMEOUT_BENCH:-60}" ;; memcheck-*) echo "${TIMEOUT_SANITIZER:-40}" ;;
    racecheck-*) echo "${TIMEOUT_RACECHECK:-80}" ;; synccheck-*) echo "${TIMEOUT_SYNCCHECK:-60}" ;;
    cmake) echo "${TIMEOUT_CMAKE:-180}" ;;
  esac
}

RESULTS=${OUT:-bench/results/gpu-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
SUMMARY=$RESULTS/summary.txt
ARCHIVE=$RESULTS/logs.tar.gz
# Logs and results gather here and travel as one archive (the device tool brings back
# at most 8 files).
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rnnfast-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

say() { echo "$*" | tee -a "$SUMMARY"; }
# Indented key lines of a log into the summary.
excerpt() { sed 's/^/    /' | tee -a "$SUMMARY"; }

archive() {
  tar -czf "$ARCHIVE.tmp" -C "$WORK" . && mv "$ARCHIVE.tmp" "$ARCHIVE"
}

overall=PASS
fail() { overall=FAIL; }
incomplete() { [[ $overall == FAIL ]] || overall=INCOMPLETE; }
status_line() {  # NAME STATUS SECONDS LIMIT
  say "$(printf '%-22s %-34s %5ss  (predicted %ss, limit %ss)' "$1" "$2" "$3" "$(predicted "$1")" "$4")"
}
skip() {  # NAME WHY
  status_line "$1" "SKIPPED ($2)" 0 "$(limit_of "$1")"
}

# run_step NAME CMD...: runs CMD under the step's limit (capped by what is left of
# TIMEOUT_TOTAL), its output in NAME.log, and records the status in STEP_STATUS.
STEP_STATUS=""
run_step() {
  local name=$1
  shift
  local limit left start rc log=$RESULTS/$name.log
  limit=$(limit_of "$name")
  left=$(( DEADLINE - $(date +%s) - 5 ))
  if (( left < 5 )); then
    skip "$name" "no time left of TIMEOUT_TOTAL=${TIMEOUT_TOTAL:-500}s"
    STEP_STATUS=SKIPPED
    incomplete
    return 1
  fi
  (( limit > left )) && limit=$left
  start=$(date +%s)
  echo "== $name: $*" >"$log"
  if [[ $DRY -eq 1 ]]; then
    timeout --kill-after=5 "$limit" bash "$SELF" --fake-step "$name" "$@" >>"$log" 2>&1
  else
    timeout --kill-after=5 "$limit" "$@" >>"$log" 2>&1
  fi
  rc=$?
  case $rc in
    0) STEP_STATUS=PASS ;;
    124|137) STEP_STATUS="TIMEOUT after ${limit}s"; fail ;;
    *)
      if [[ $name == *check-* ]] && grep -q "Device not supported" "$log"; then
        STEP_STATUS="UNAVAILABLE (compute-sanitizer: Device not supported)"
        incomplete
      else
        STEP_STATUS="FAIL (exit $rc)"
        fail
      fi
      ;;
  esac
  echo "== $name: $STEP_STATUS after $(( $(date +%s) - start ))s" >>"$log"
  mv "$log" "$WORK/"
  status_line "$name" "$STEP_STATUS" "$(( $(date +%s) - start ))" "$limit"
  archive
  [[ $STEP_STATUS == PASS ]]
}

find_sanitizer() {
  if [[ $DRY -eq 1 ]]; then echo compute-sanitizer; return 0; fi
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
  echo "rnnfast GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)$([[ $DRY -eq 1 ]] && echo ' (DRY RUN: steps faked)')"
  echo "repo: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "steps:${STEPS//,/ }"
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS TIMEOUT_TOTAL=${TIMEOUT_TOTAL:-500}"
  if [[ $DRY -eq 1 ]]; then
    echo "machine: dry run, not probed ($(nproc) cores)"
  else
    echo "--- nvidia-smi"
    timeout 5 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1 || true
    echo "--- nvcc"
    timeout 5 nvcc --version 2>&1 | tail -n 2 || true
    echo "--- python / torch ($(nproc) cores)"
    timeout 20 "$PY" - <<'EOF' 2>&1
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
  fi
  echo "--- steps"
} >"$SUMMARY"
cat "$SUMMARY"

# --- build -------------------------------------------------------------------------
build_ok=1
if want build; then
  if run_step build env RNNFAST_CUDA=1 "$PY" setup.py build_ext --inplace; then
    if [[ $DRY -eq 1 ]]; then
      echo "dry run: build_info not read" >"$WORK/build_info.txt"
    else
      timeout 30 "$PY" -c "import rnnfast, json; print(json.dumps(rnnfast.build_info()))" \
        >"$WORK/build_info.txt" 2>&1
    fi
    sed 's/^/build_info /' "$WORK/build_info.txt" | head -n 3 | excerpt
  else
    build_ok=0
    tail -n 25 "$WORK/build.log" | excerpt
  fi
else
  skip build "not in GPU_CHECK_STEPS"
fi

# Steps after the build: SKIPPED when not selected or when the build failed.
gate() {  # NAME -> 0 when the step should run
  if ! want "$1"; then skip "$1" "not in GPU_CHECK_STEPS"; return 1; fi
  if [[ $build_ok -eq 0 ]]; then skip "$1" "build did not pass"; incomplete; return 1; fi
  return 0
}

# --- CUDA tests --------------------------------------------------------------------
if gate test; then
  if [[ -n "${GPU_TEST_PATHS:-}" ]]; then
    read -r -a TEST_PATHS <<<"$GPU_TEST_PATHS"
  else
    TEST_PATHS=()
    for f in tests/test_cuda*.py; do
      [[ $f == tests/test_cuda_compile.py ]] || TEST_PATHS+=("$f")
    done
  fi
  # -v puts each test's name in the log before it runs: a hang shows where.
  # shellcheck disable=SC2086
  run_step test "$PY" -m pytest "${TEST_PATHS[@]}" -v -rfEs --durations=10 \
    -p no:cacheprovider ${PYTEST_ARGS:-}
  [[ -f "$WORK/test.log" ]] && grep -E '^(=+ .*(passed|failed|error|skipped|deselected|no tests ran).* =+|FAILED|ERROR)' \
    "$WORK/test.log" | tail -n 20 | excerpt
fi

# --- benchmark (all three cells; LSTM/GRU rows UNSUPPORTED until they have kernels) -
for set in "${BENCH_SETS[@]}"; do
  if gate "bench-$set"; then
    # shellcheck disable=SC2086
    run_step "bench-$set" "$PY" -m rnnfast.bench --set "$set" --device cuda --cell all \
      --out "$WORK/bench-$set" --progress plain \
      $BENCH_REDUCED_ARGS ${BENCH_ARGS:-}
    # The benchmark's closing summary (and its error line, if any).
    [[ -f "$WORK/bench-$set.log" ]] && grep -v '^== ' "$WORK/bench-$set.log" | tail -n 12 | excerpt
  fi
done

# --- compute-sanitizer: one small case per path -------------------------------------
for step in memcheck-step memcheck-persistent racecheck-step racecheck-persistent \
            synccheck-step synccheck-persistent; do
  gate "$step" || continue
  if ! SAN=$(find_sanitizer); then
    skip "$step" "compute-sanitizer not found"
    incomplete
    continue
  fi
  tool=${step%%-*}
  path=${step#*-}
  # Without the caching allocator, memcheck sees each tensor's real bounds.
  # shellcheck disable=SC2086
  run_step "$step" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool "$tool" \
    --error-exitcode 99 --print-limit 50 ${SANITIZER_ARGS:-} \
    "$PY" scripts/sanitizer_case.py --path "$path"
  [[ -f "$WORK/$step.log" ]] && grep -E "ERROR SUMMARY|RACECHECK SUMMARY|sanitizer_case:|not checked|Device not supported" \
    "$WORK/$step.log" | tail -n 4 | excerpt
done

# --- CMake build with CUDA (optional) ----------------------------------------------
if want cmake; then
  run_step cmake env CMAKE_BUILD_DIR=cmake-build/cuda CMAKE_JOBS="$MAX_JOBS" \
    CMAKE_ARGS="-DRNNFAST_WITH_CUDA=ON" scripts/cmake_check.sh "$PY"
  [[ -f "$WORK/cmake.log" ]] && tail -n 5 "$WORK/cmake.log" | excerpt
else
  skip cmake "not in GPU_CHECK_STEPS"
fi

# --- the archive and the $OUT layout ------------------------------------------------
cp "$SUMMARY" "$WORK/summary.txt"
archive
say "archive: $(basename "$ARCHIVE"), $(tar -tzf "$ARCHIVE" | grep -vc '/$') files, $(du -k "$ARCHIVE" | cut -f1) KiB"
# The device tool brings back at most 8 files, no more than 2 folders down.
n_files=$(find "$RESULTS" -type f | wc -l)
too_deep=$(cd "$RESULTS" && find . -mindepth 4 | head -n 3)
if (( n_files > 8 )) || [[ -n "$too_deep" ]]; then
  say "layout: $n_files files in $RESULTS (at most 8), too deep: ${too_deep:-none}"
  fail
fi
predicted_total=10  # the machine probe
for s in "${ALL_STEPS[@]}"; do want "$s" && predicted_total=$(( predicted_total + $(predicted "$s") )); done
say "total: $(( $(date +%s) - START ))s (predicted ${predicted_total}s for the selected steps)"
say "overall: $overall"
case $overall in PASS) exit 0 ;; FAIL) exit 1 ;; *) exit 2 ;; esac
