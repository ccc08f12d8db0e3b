// Few-row float32 GEMMs for the per-step products at small batch (small_gemm_avx2.cpp).
#pragma once

#include <cstdint>

namespace rnnfast::cpu {

// C (M x N, row stride ldc) = A (M x K, lda) B (K x N row-major, ldb), or C += A B with
// accumulate (A B is summed first, then added). One thread.
using SmallGemm = void (*)(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                           const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate);

// Steps of at most this many rows use the small GEMM where the CPU has one.
inline constexpr int64_t kSmallGemmMaxRows = 8;

namespace avx2 {
// Null where the CPU lacks AVX2 + FMA.
SmallGemm small_gemm();
}  // namespace avx2

}  // namespace rnnfast::cpu
