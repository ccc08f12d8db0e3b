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

// The same product with B packed once per layer (pack_small_gemm_b): column panels of
// kSmallGemmPanel columns, each K x kSmallGemmPanel contiguous (the last zero-padded), so
// that the kernel streams B instead of striding through it. Bitwise the same results.
using SmallGemmPacked = void (*)(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                                 const float* Bp, float* C, int64_t ldc, bool accumulate);

inline constexpr int64_t kSmallGemmPanel = 24;

inline int64_t small_gemm_packed_size(int64_t K, int64_t N) {
  return (N + kSmallGemmPanel - 1) / kSmallGemmPanel * K * kSmallGemmPanel;
}

// Bp (small_gemm_packed_size(K, N) floats) = B (K x N, row stride ldb) in panels.
inline void pack_small_gemm_b(int64_t K, int64_t N, const float* B, int64_t ldb, float* Bp) {
  for (int64_t n0 = 0; n0 < N; n0 += kSmallGemmPanel) {
    const int64_t width = N - n0 < kSmallGemmPanel ? N - n0 : kSmallGemmPanel;
    for (int64_t k = 0; k < K; ++k) {
      float* dst = Bp + (n0 / kSmallGemmPanel) * K * kSmallGemmPanel + k * kSmallGemmPanel;
      for (int64_t j = 0; j < kSmallGemmPanel; ++j) dst[j] = j < width ? B[k * ldb + n0 + j] : 0.f;
    }
  }
}

namespace avx2 {
// Null where the CPU lacks AVX2 + FMA.
SmallGemm small_gemm();
SmallGemmPacked small_gemm_packed();
}  // namespace avx2

}  // namespace rnnfast::cpu
