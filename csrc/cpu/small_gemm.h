// float32 GEMMs for the per-step products on AVX2 CPUs (small_gemm_avx2.cpp).
#pragma once

#include <cstdint>

namespace rnnfast::cpu {

// C (M x N, row stride ldc) = A (M x K, lda) B (K x N row-major, ldb), or C += A B with
// accumulate (A B is summed first, then added). One thread.
using SmallGemm = void (*)(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                           const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate);

// Steps of at most this many rows use the small GEMM (B unpacked) where the CPU has one.
inline constexpr int64_t kSmallGemmMaxRows = 8;

// C (M x N, ldc) = A (M x K, lda) B^T with B stored N x K (row stride ldb), or C += A B^T
// with accumulate: W^T read from W where it is, as dot products of rows (the few-row
// products of a cell or of a short sequence, whose weights are not packed; a BLAS call
// there is mostly dispatch: MKL's sgemv took 2 us for a 256 x 64 matrix). One thread;
// each element's sum is the same whatever M, N or the thread count.
using SmallGemmBt = SmallGemm;

// The same product with B packed once per layer (pack_panels): column panels of
// kSmallGemmPanel columns, each K x kSmallGemmPanel contiguous (the last zero-padded), so
// that the kernel streams B instead of striding through it. Bitwise the same results.
// Streaming its panels from L1/L2, the 4 x 24 tile runs at 75-80 GFLOP/s per core on the
// project's AVX2 machine (Zen 3, ~90 peak) for any number of rows, against MKL's 50-58 on
// the same per-step shapes: every cell's per-step products use it (pack_step_weights).
using SmallGemmPacked = void (*)(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                                 const float* Bp, float* C, int64_t ldc, bool accumulate);

inline constexpr int64_t kSmallGemmPanel = 24;

inline int64_t small_gemm_packed_size(int64_t K, int64_t N) {
  return (N + kSmallGemmPanel - 1) / kSmallGemmPanel * K * kSmallGemmPanel;
}

// Bp (small_gemm_packed_size(K, N) floats) = the K x N matrix whose element (k, j) is
// b(k, j), in panels: the packer of any operand (a slice of columns, W^T read from W).
template <typename Get>
void pack_panels(int64_t K, int64_t N, const Get& b, float* Bp) {
  for (int64_t n0 = 0; n0 < N; n0 += kSmallGemmPanel) {
    const int64_t width = N - n0 < kSmallGemmPanel ? N - n0 : kSmallGemmPanel;
    float* panel = Bp + (n0 / kSmallGemmPanel) * K * kSmallGemmPanel;
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < kSmallGemmPanel; ++j)
        panel[k * kSmallGemmPanel + j] = j < width ? b(k, n0 + j) : 0.f;
  }
}

// Bp = the K x N matrix whose column j is the K contiguous values at row(j) (W^T from
// W's rows), in panels.
template <typename Row>
void pack_panels_of_rows(int64_t K, int64_t N, const Row& row, float* Bp) {
  for (int64_t n0 = 0; n0 < N; n0 += kSmallGemmPanel) {
    const int64_t width = N - n0 < kSmallGemmPanel ? N - n0 : kSmallGemmPanel;
    float* panel = Bp + (n0 / kSmallGemmPanel) * K * kSmallGemmPanel;
    for (int64_t j = 0; j < kSmallGemmPanel; ++j) {
      const float* src = j < width ? row(n0 + j) : nullptr;
      for (int64_t k = 0; k < K; ++k) panel[k * kSmallGemmPanel + j] = src ? src[k] : 0.f;
    }
  }
}

// Bp = B (K x N, row stride ldb) in panels.
inline void pack_small_gemm_b(int64_t K, int64_t N, const float* B, int64_t ldb, float* Bp) {
  pack_panels(K, N, [&](int64_t k, int64_t j) { return B[k * ldb + j]; }, Bp);
}

namespace avx2 {
// Null where the CPU lacks AVX2 + FMA.
SmallGemm small_gemm();
SmallGemmPacked small_gemm_packed();
SmallGemmBt small_gemm_bt();
}  // namespace avx2

}  // namespace rnnfast::cpu
