// The float32 GEMMs of a time step, compiled for AVX2 + FMA: a 4-row x 24-column tile
// of C in registers. small_gemm reads B where it is (row-major K x N) for the few-row
// products whose weights are not packed (at such sizes a BLAS call costs more in
// dispatch, packing and blocking than in multiply-adds); small_gemm_packed reads B from
// panels packed once per layer, at any number of rows (the per-step products of every
// cell on AVX2 CPUs). One thread; each element is a k-ordered sum (per 256-row chunk of
// B for the packed one), so results do not depend on the thread count or on M.
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
// (The register tiles' loops are unrolled explicitly: left to itself GCC keeps the
// accumulator array in memory under the extension's flags, at a third of the speed.)
template <int R, int V>
inline void tile(int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                 int64_t ldc, bool accumulate) {
  __m256 acc[R][V];
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 16
    for (int v = 0; v < V; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m256 b[V];
    #pragma GCC unroll 16
    for (int v = 0; v < V; ++v) b[v] = _mm256_loadu_ps(B + k * ldb + 8 * v);
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(A + r * lda + k);
      #pragma GCC unroll 16
      for (int v = 0; v < V; ++v) acc[r][v] = _mm256_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 16
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

// The first `width` columns of R rows of a scratch tile (row stride ld) into C, added
// where accumulating: a partial panel's padding columns are never stored.
template <int R>
void store_columns(int64_t width, const float* part, int64_t ld, float* C, int64_t ldc,
                   bool accumulate) {
  for (int r = 0; r < R; ++r)
    for (int64_t j = 0; j < width; ++j) {
      float* c = C + r * ldc + j;
      *c = accumulate ? *c + part[r * ld + j] : part[r * ld + j];
    }
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
  store_columns<R>(width, &part[0][0], P, C, ldc, accumulate);
}

// Rows [0, R) x NP whole panels (NP * 24 columns) of C (+)= A B: for the 1-2 rows left
// after the four-row groups, whose single-panel tile would hold only 3-6 accumulators
// and wait on the FMA latency (at batch 1 every step). Each element is the same
// k-ordered sum as in tile().
template <int R, int NP>
inline void tile_panels(int64_t K, const float* A, int64_t lda, const float* panel,
                        int64_t panel_stride, float* C, int64_t ldc, bool accumulate) {
  constexpr int64_t P = 24;
  __m256 acc[R][3 * NP];
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 16
    for (int v = 0; v < 3 * NP; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(A + r * lda + k);
      #pragma GCC unroll 16
      for (int q = 0; q < NP; ++q)
        #pragma GCC unroll 16
        for (int v = 0; v < 3; ++v)
          acc[r][3 * q + v] = _mm256_fmadd_ps(
              a, _mm256_loadu_ps(panel + q * panel_stride + k * P + 8 * v), acc[r][3 * q + v]);
    }
  }
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 16
    for (int q = 0; q < NP; ++q)
      #pragma GCC unroll 16
      for (int v = 0; v < 3; ++v) {
        float* c = C + r * ldc + q * P + 8 * v;
        const __m256 x = acc[r][3 * q + v];
        _mm256_storeu_ps(c, accumulate ? _mm256_add_ps(_mm256_loadu_ps(c), x) : x);
      }
}

// B packed in 24-column panels. Each element of C is the k-ordered sum over each chunk of
// kChunkK rows of B, the chunks added in order, whichever path computes it.
constexpr int64_t kChunkK = 256;

// The four-row groups, in chunks of kChunkK rows of B (24 KiB of a panel: it stays in L1
// while every row group uses it). Where the groups' rows of A over all of K fit in L2,
// panels are outer and each panel's chunks read A from L2; where they do not (the GRU /
// LSTM backward's dG at large H: K = G*H), chunks are outer, so each chunk of A is read
// from L2 for every panel instead of all of A from L3 (128 x 256 x 2048: 81 against 66
// GFLOP/s). Either order adds the chunks of each element in the same order.
constexpr int64_t kPanelsOuterMaxABytes = 384 * 1024;

void packed_four_row_groups(int64_t M4, int64_t N, int64_t K, const float* A, int64_t lda,
                            const float* Bp, float* C, int64_t ldc, bool accumulate) {
  constexpr int64_t P = kSmallGemmPanel;
  auto chunk_of_panel = [&](int64_t n, int64_t k0) {
    const float* panel = Bp + (n / P) * K * P;
    const int64_t width = N - n < P ? N - n : P;
    const int64_t Kc = K - k0 < kChunkK ? K - k0 : kChunkK;
    for (int64_t m = 0; m < M4; m += 4)
      panel_rows<4>(width, Kc, A + m * lda + k0, lda, panel + k0 * P, C + m * ldc + n, ldc,
                    accumulate || k0 > 0);
  };
  if (M4 * K * int64_t(sizeof(float)) <= kPanelsOuterMaxABytes) {
    for (int64_t n = 0; n < N; n += P)
      for (int64_t k0 = 0; k0 < K; k0 += kChunkK) chunk_of_panel(n, k0);
  } else {
    for (int64_t k0 = 0; k0 < K; k0 += kChunkK)
      for (int64_t n = 0; n < N; n += P) chunk_of_panel(n, k0);
  }
}

// The last Q panels of rows [0, R), the last possibly partial (width columns in all):
// one tile over all of them through a scratch row, so that a 1-row tail keeps 6-9
// accumulators instead of 3 that wait on the FMA latency (at batch 1, H = 64 the Elman
// step's whole product is such a tail). Each element is the same k-ordered sum.
template <int R, int Q>
void last_panels(int64_t width, int64_t K, const float* A, int64_t lda, const float* panel,
                 int64_t panel_stride, float* C, int64_t ldc, bool accumulate) {
  constexpr int64_t P = kSmallGemmPanel;
  float part[R][Q * P];
  tile_panels<R, Q>(K, A, lda, panel, panel_stride, &part[0][0], Q * P, false);
  store_columns<R>(width, &part[0][0], Q * P, C, ldc, accumulate);
}

// R < 4 rows: NP whole panels per tile (R * 3 * NP <= 12 accumulators), then the
// panels left (at most NP, the last possibly partial) in one tile.
template <int R, int NP>
void packed_few_rows(int64_t N, int64_t K, const float* A, int64_t lda, const float* Bp,
                     float* C, int64_t ldc, bool accumulate) {
  constexpr int64_t P = kSmallGemmPanel;
  for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {
    const int64_t Kc = K - k0 < kChunkK ? K - k0 : kChunkK;
    const bool add = accumulate || k0 > 0;
    int64_t n = 0;
    for (; n + NP * P <= N; n += NP * P)
      tile_panels<R, NP>(Kc, A + k0, lda, Bp + (n / P) * K * P + k0 * P, K * P, C + n, ldc, add);
    // N - n < NP * P columns are left: at most NP panels, within the register budget.
    const int64_t rest = N - n;
    const float* panel = Bp + (n / P) * K * P + k0 * P;
    auto last = [&](auto Q) {
      last_panels<R, Q()>(rest, Kc, A + k0, lda, panel, K * P, C + n, ldc, add);
    };
    switch ((rest + P - 1) / P) {
      case 4:
        if constexpr (NP >= 4) last(std::integral_constant<int, 4>{});
        break;
      case 3:
        if constexpr (NP >= 3) last(std::integral_constant<int, 3>{});
        break;
      case 2:
        if constexpr (NP >= 2) last(std::integral_constant<int, 2>{});
        break;
      case 1:
        panel_rows<R>(rest, Kc, A + k0, lda, panel, C + n, ldc, add);
        break;
      default:
        break;
    }
  }
}

void small_gemm_packed_avx2(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                            const float* Bp, float* C, int64_t ldc, bool accumulate) {
  const int64_t M4 = M / 4 * 4;
  packed_four_row_groups(M4, N, K, A, lda, Bp, C, ldc, accumulate);
  const float* A_rest = A + M4 * lda;
  float* C_rest = C + M4 * ldc;
  switch (M - M4) {
    case 3: packed_few_rows<3, 1>(N, K, A_rest, lda, Bp, C_rest, ldc, accumulate); break;
    case 2: packed_few_rows<2, 2>(N, K, A_rest, lda, Bp, C_rest, ldc, accumulate); break;
    case 1: packed_few_rows<1, 4>(N, K, A_rest, lda, Bp, C_rest, ldc, accumulate); break;
    default: break;
  }
}

// Dot products of R rows of A with NB rows of B (R * NB <= 8 accumulators), 8 k at a
// time, the last K % 8 through a masked load; then each accumulator's 8 lanes are summed
// (the same pairwise order for every element).
template <int R, int NB>
inline void dot_tile(int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                     float* C, int64_t ldc, bool accumulate) {
  __m256 acc[R][4];
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 16
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm256_setzero_ps();
  auto step = [&](int64_t k, auto load) {
    __m256 b[NB];
    #pragma GCC unroll 16
    for (int j = 0; j < NB; ++j) b[j] = load(B + j * ldb + k);
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m256 a = load(A + r * lda + k);
      #pragma GCC unroll 16
      for (int j = 0; j < NB; ++j) acc[r][j] = _mm256_fmadd_ps(a, b[j], acc[r][j]);
    }
  };
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) step(k, [](const float* p) { return _mm256_loadu_ps(p); });
  if (k < K) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(K - k)), lanes);
    step(k, [&](const float* p) { return _mm256_maskload_ps(p, mask); });
  }
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    // [s0 s1 s2 s3]: the four accumulators' lane sums.
    const __m256 s01 = _mm256_hadd_ps(acc[r][0], acc[r][1]);
    const __m256 s23 = _mm256_hadd_ps(acc[r][2], acc[r][3]);
    const __m256 s = _mm256_hadd_ps(s01, s23);
    const __m128 sums = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    float out[4];
    _mm_storeu_ps(out, sums);
    float* c = C + r * ldc;
    for (int j = 0; j < NB; ++j) c[j] = accumulate ? c[j] + out[j] : out[j];
  }
}

template <int R>
void dot_rows(int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
              float* C, int64_t ldc, bool accumulate) {
  int64_t n = 0;
  for (; n + 4 <= N; n += 4) dot_tile<R, 4>(K, A, lda, B + n * ldb, ldb, C + n, ldc, accumulate);
  switch (N - n) {
    case 3: dot_tile<R, 3>(K, A, lda, B + n * ldb, ldb, C + n, ldc, accumulate); break;
    case 2: dot_tile<R, 2>(K, A, lda, B + n * ldb, ldb, C + n, ldc, accumulate); break;
    case 1: dot_tile<R, 1>(K, A, lda, B + n * ldb, ldb, C + n, ldc, accumulate); break;
    default: break;
  }
}

// Two rows of A at a time (each load of B serves both), then the last one.
void small_gemm_bt_avx2(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                        const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  int64_t m = 0;
  for (; m + 2 <= M; m += 2)
    dot_rows<2>(N, K, A + m * lda, lda, B, ldb, C + m * ldc, ldc, accumulate);
  if (m < M) dot_rows<1>(N, K, A + m * lda, lda, B, ldb, C + m * ldc, ldc, accumulate);
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
SmallGemmBt small_gemm_bt() { return have_avx2_fma() ? &small_gemm_bt_avx2 : nullptr; }

}  // namespace rnnfast::cpu::avx2
