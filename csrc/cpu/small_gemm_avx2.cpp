// A float32 GEMM for the few-row products of a time step (batch 1 to 8), compiled for
// AVX2 + FMA. At such sizes a BLAS call costs more in dispatch, packing and blocking
// than in multiply-adds; this kernel reads B where it is (row-major K x N, the layout
// the step GEMMs keep their weights in) and keeps a 4-row x 24-column tile of C in
// registers over all of K. One thread; each element is a k-ordered sum, so results do
// not depend on the thread count or on M.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "small_gemm.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace rnnfast::cpu::avx2 {
namespace {

// Rows [0, R) x columns [0, 8 V) of C (+)= A B, the tile in registers over all of K
// (R * V <= 12 accumulators + V loads of B + one broadcast: the 16 ymm registers).
template <int R, int V>
inline void tile(int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                 int64_t ldc, bool accumulate) {
  __m256 acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m256 b[V];
    for (int v = 0; v < V; ++v) b[v] = _mm256_loadu_ps(B + k * ldb + 8 * v);
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(A + r * lda + k);
      for (int v = 0; v < V; ++v) acc[r][v] = _mm256_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) {
      float* c = C + r * ldc + 8 * v;
      _mm256_storeu_ps(c, accumulate ? _mm256_add_ps(_mm256_loadu_ps(c), acc[r][v]) : acc[r][v]);
    }
}

// The last N % 8 columns of one row, the same k-ordered sum per element.
inline void tail_columns(int64_t n, int64_t K, const float* A, const float* B, int64_t ldb,
                         float* C, bool accumulate) {
  for (int64_t j = 0; j < n; ++j) {
    float acc = 0.f;
    for (int64_t k = 0; k < K; ++k) acc = std::fma(A[k], B[k * ldb + j], acc);
    C[j] = accumulate ? C[j] + acc : acc;
  }
}

// R rows: B is read once per R rows (at batch 8, twice per step).
template <int R>
void rows(int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
          float* C, int64_t ldc, bool accumulate) {
  int64_t n = 0;
  for (; n + 24 <= N; n += 24) tile<R, 3>(K, A, lda, B + n, ldb, C + n, ldc, accumulate);
  for (; n + 8 <= N; n += 8) tile<R, 1>(K, A, lda, B + n, ldb, C + n, ldc, accumulate);
  if (n < N)
    for (int r = 0; r < R; ++r)
      tail_columns(N - n, K, A + r * lda, B + n, ldb, C + r * ldc + n, accumulate);
}

// Calls f(R, m) for the row groups [m, m + R) of M rows: fours, then the 1-3 left (R is
// a std::integral_constant, so each group size gets its own register tile).
template <typename F>
void for_row_groups(int64_t M, const F& f) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) f(std::integral_constant<int, 4>{}, m);
  switch (M - m) {
    case 3: f(std::integral_constant<int, 3>{}, m); break;
    case 2: f(std::integral_constant<int, 2>{}, m); break;
    case 1: f(std::integral_constant<int, 1>{}, m); break;
    default: break;
  }
}

void small_gemm_avx2(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                     const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  for_row_groups(M, [&](auto R, int64_t m) {
    rows<R()>(N, K, A + m * lda, lda, B, ldb, C + m * ldc, ldc, accumulate);
  });
}

// One 24-column panel of B (K x 24, the columns past `width` zero) times R rows of A:
// a 4 x 24 register tile; a partial panel goes through a 24-wide scratch row (its
// padding columns are not stored). Each element is the same k-ordered sum as above.
template <int R>
void panel_rows(int64_t width, int64_t K, const float* A, int64_t lda, const float* panel,
                float* C, int64_t ldc, bool accumulate) {
  constexpr int64_t P = 24;
  if (width == P) {
    tile<R, 3>(K, A, lda, panel, P, C, ldc, accumulate);
    return;
  }
  float part[R][P];
  tile<R, 3>(K, A, lda, panel, P, &part[0][0], P, false);
  for (int r = 0; r < R; ++r)
    for (int64_t j = 0; j < width; ++j) {
      float* c = C + r * ldc + j;
      *c = accumulate ? *c + part[r][j] : part[r][j];
    }
}

// B packed in 24-column panels. Panels outer, then chunks of kChunkK rows of the panel
// (24 KiB: they stay in L1 while every row group of A uses them), then the row groups;
// A's M rows (callers keep M to a block of at most a few hundred rows) stay in L2.
// Each element is the k-ordered sum of each chunk, the chunks added in order.
constexpr int64_t kChunkK = 256;

void small_gemm_packed_avx2(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                            const float* Bp, float* C, int64_t ldc, bool accumulate) {
  constexpr int64_t P = kSmallGemmPanel;
  for (int64_t n = 0; n < N; n += P) {
    const float* panel = Bp + (n / P) * K * P;
    const int64_t width = N - n < P ? N - n : P;
    for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {
      const int64_t Kc = K - k0 < kChunkK ? K - k0 : kChunkK;
      const bool add = accumulate || k0 > 0;
      for_row_groups(M, [&](auto R, int64_t m) {
        panel_rows<R()>(width, Kc, A + m * lda + k0, lda, panel + k0 * P, C + m * ldc + n, ldc,
                        add);
      });
    }
  }
}

}  // namespace
}  // namespace rnnfast::cpu::avx2

#pragma GCC pop_options

namespace rnnfast::cpu::avx2 {

namespace {
bool have_avx2_fma() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
}  // namespace

SmallGemm small_gemm() { return have_avx2_fma() ? &small_gemm_avx2 : nullptr; }
SmallGemmPacked small_gemm_packed() { return have_avx2_fma() ? &small_gemm_packed_avx2 : nullptr; }

}  // namespace rnnfast::cpu::avx2
