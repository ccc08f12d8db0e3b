#!/usr/bin/env bash
# Compiles every rnnfast CUDA kernel translation unit (csrc/cuda/*.cu) with nvcc for
# sm_80 and sm_90 and prints ptxas's register / spill report. Needs only nvcc: the
# kernel files use the CUDA toolkit alone (no torch, no cuBLAS), so this runs on
# CPU-only machines and in CI. Exits non-zero if a file fails to compile or if a
# kernel file includes torch or cuBLAS headers.
#
#   scripts/cuda_compile_check.sh            (make cuda-compile-check)
# Knobs: NVCC (compiler, default: nvcc on PATH, else $CUDA_HOME/bin/nvcc),
#        CUDA_CHECK_GENCODE (override the -gencode flags), KEEP_DIR (keep objects there).
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")}
if [[ ! -x "$NVCC" ]]; then
  echo "cuda-compile-check: nvcc not found (set NVCC or CUDA_HOME)" >&2
  exit 2
fi
GENCODE=${CUDA_CHECK_GENCODE:-"-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90"}
# The flags torch's CUDAExtension passes to nvcc (so the kernels are checked as they
# are built), plus setup.py's "-O3 -lineinfo". C++17 is what torch 2.11 (the GPU
# machines) uses; the code is valid C++20 too.
FLAGS=(-std=c++17 -O3 -lineinfo --expt-relaxed-constexpr
       -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
       -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
       -Icsrc -Xptxas -v)

shopt -s nullglob
KERNELS=(csrc/cuda/*.cu)
HEADERS=(csrc/kernels/*.cuh)
if [[ ${#KERNELS[@]} -eq 0 ]]; then
  echo "cuda-compile-check: no kernel files under csrc/cuda/*.cu" >&2
  exit 1
fi

# Kernel TUs and their headers must stay framework-free (see csrc/kernels/rnn_cuda.cuh).
if grep -nE '^\s*#\s*include\s*[<"](torch/|ATen/|c10/|cublas|cublasLt|cudnn)' \
    "${KERNELS[@]}" "${HEADERS[@]}"; then
  echo "cuda-compile-check: FAILED: the kernel files above include torch or cuBLAS headers" >&2
  exit 1
fi

OUTDIR=${KEEP_DIR:-$(mktemp -d)}
mkdir -p "$OUTDIR"
[[ -n "${KEEP_DIR:-}" ]] || trap 'rm -rf "$OUTDIR"' EXIT
DEMANGLE=cat
command -v c++filt >/dev/null && DEMANGLE=c++filt

echo "nvcc: $("$NVCC" --version | tail -n 2 | head -n 1)"
echo "flags: ${FLAGS[*]} -c $GENCODE"
status=0
compiled=()
total_spill=0
for src in "${KERNELS[@]}"; do
  obj="$OUTDIR/$(basename "${src%.cu}").o"
  log="$OUTDIR/$(basename "${src%.cu}").log"
  start=$(date +%s)
  # shellcheck disable=SC2086
  if "$NVCC" "${FLAGS[@]}" -c $GENCODE "$src" -o "$obj" >"$log" 2>&1; then
    compiled+=("$src")
    echo "== $src: compiled in $(( $(date +%s) - start ))s"
  else
    echo "== $src: FAILED" >&2
    cat "$log" >&2
    status=1
    continue
  fi
  grep -vE '^ptxas info|^    [0-9]+ bytes stack|^ptxas info    : (Compile time|Function properties)' \
    "$log" || true  # compiler warnings, if any
  # ptxas prints, per kernel and arch: "Compiling entry function 'NAME' for 'sm_XX'",
  # "N bytes stack frame, N bytes spill stores, N bytes spill loads", "Used N registers".
  report=$(awk '
    /Compiling entry function/ {
      match($0, /function .[^'"'"']+/); name = substr($0, RSTART + 10, RLENGTH - 10)
      match($0, /for .sm_[0-9a-z]+/); arch = substr($0, RSTART + 5, RLENGTH - 5)
    }
    /bytes stack frame/ { stack = $1; st = $5; ld = $9 }
    /Used [0-9]+ registers/ {
      match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15)
      if (name != "") printf "%s\t%s\t%s\t%s\t%s\t%s\n", arch, regs, stack, st, ld, name
      name = ""
    }' "$log")
  if [[ -n "$report" ]]; then
    printf '  %-6s %5s %6s %7s %7s  %s\n' arch regs stack spill_st spill_ld kernel
    while IFS=$'\t' read -r arch regs stack st ld name; do
      short=$(echo "$name" | $DEMANGLE | sed -E \
        -e 's/rnnfast::cuda::\(anonymous namespace\):://g' -e 's/rnnfast::cuda:://g' \
        -e 's/rnnfast::Activation\)0/Tanh/g; s/rnnfast::Activation\)1/Relu/g; s/\(Tanh/Tanh/g; s/\(Relu/Relu/g' \
        -e 's/\(.*\)$//')
      printf '  %-6s %5s %6s %7s %7s  %s\n' "$arch" "$regs" "$stack" "$st" "$ld" "$short"
      total_spill=$(( total_spill + st + ld ))
    done <<<"$report"
  fi
done

echo "spill bytes (stores + loads, all kernels): $total_spill"
if [[ $status -ne 0 ]]; then
  echo "cuda-compile-check: FAILED" >&2
  exit $status
fi
echo "cuda-compile-check: OK: ${#compiled[@]} of ${#KERNELS[@]} kernel files compiled for sm_80 and sm_90: ${compiled[*]}"
