#include "step_avx512.h"

#include <immintrin.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#define RNNFAST_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma,avx2")))

// GCC's own intrinsic headers self-initialise the undefined vector behind masked loads
// (`__m512 __Y = __Y;`), which -Wmaybe-uninitialized reports once per instantiation.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// torch's libtorch_cpu exports SLEEF; this is its 1-ulp AVX-512 tanh.
extern "C" __m512 Sleef_tanhf16_u10avx512f(__m512);

namespace rnnfast::cpu::avx512 {

bool supported() {
  static const bool ok = __builtin_cpu_supports("avx512f") &&
                         __builtin_cpu_supports("avx512dq") &&
                         __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
  return ok;
}

namespace {

constexpr int kVec = 16;          // floats per zmm
constexpr int kMaxRows = 4;       // rows per register block
constexpr int kMaxVecs = 4;       // zmm per row per register block (64 columns)

// MR rows x NV vectors of C; the last vector is masked by `tail`.
template <int MR, int NV, Epilogue E>
RNNFAST_AVX512 void block(int64_t K, const float* A, int64_t lda, int64_t aks, const float* B, int64_t ldb,
                          float* C, int64_t ldc, const float* Y, int64_t ldy, const float* bias,
                          Activation act, __mmask16 tail) {
  __m512 acc[MR][NV];
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();

  for (int64_t k = 0; k < K; ++k) {
    const float* bk = B + k * ldb;
    __m512 b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      b[v] = v + 1 == NV ? _mm512_maskz_loadu_ps(tail, bk + v * kVec) : _mm512_loadu_ps(bk + v * kVec);
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * lda + k * aks]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
    }
  }

  const __m512 zero = _mm512_setzero_ps();
  const __m512 one = _mm512_set1_ps(1.0f);
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) {
    float* cr = C + r * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __mmask16 m = v + 1 == NV ? tail : __mmask16(0xFFFF);
      __m512 out;
      if constexpr (E == Epilogue::Activate) {
        __m512 z = _mm512_add_ps(_mm512_maskz_loadu_ps(m, cr + v * kVec), acc[r][v]);
        z = _mm512_add_ps(z, _mm512_maskz_loadu_ps(m, bias + v * kVec));
        // max(0, z) returns z when z is NaN: NaN propagates as in torch.relu.
        out = act == Activation::Tanh ? Sleef_tanhf16_u10avx512f(z) : _mm512_max_ps(zero, z);
      } else if constexpr (E == Epilogue::ActGrad) {
        const __m512 y = _mm512_maskz_loadu_ps(m, Y + r * ldy + v * kVec);
        const __m512 d = _mm512_add_ps(_mm512_maskz_loadu_ps(m, cr + v * kVec), acc[r][v]);
        // relu: torch's threshold_backward, a select: 0 where y <= 0 (ordered compare,
        // so a NaN y keeps its gradient), the gradient elsewhere.
        out = act == Activation::Tanh
                  ? _mm512_mul_ps(d, _mm512_fnmadd_ps(y, y, one))
                  : _mm512_mask_mov_ps(d, _mm512_cmp_ps_mask(y, zero, _CMP_LE_OQ), zero);
      } else if constexpr (E == Epilogue::Accumulate) {
        out = _mm512_add_ps(_mm512_maskz_loadu_ps(m, cr + v * kVec), acc[r][v]);
      } else {
        out = acc[r][v];
      }
      _mm512_mask_storeu_ps(cr + v * kVec, m, out);
    }
  }
}

template <int MR, Epilogue E>
RNNFAST_AVX512 void block_rows(int nv, int64_t K, const float* A, int64_t lda, int64_t aks, const float* B,
                               int64_t ldb, float* C, int64_t ldc, const float* Y, int64_t ldy,
                               const float* bias, Activation act, __mmask16 tail) {
  switch (nv) {
    case 1: return block<MR, 1, E>(K, A, lda, aks, B, ldb, C, ldc, Y, ldy, bias, act, tail);
    case 2: return block<MR, 2, E>(K, A, lda, aks, B, ldb, C, ldc, Y, ldy, bias, act, tail);
    case 3: return block<MR, 3, E>(K, A, lda, aks, B, ldb, C, ldc, Y, ldy, bias, act, tail);
    default: return block<MR, 4, E>(K, A, lda, aks, B, ldb, C, ldc, Y, ldy, bias, act, tail);
  }
}

template <Epilogue E>
RNNFAST_AVX512 void step_impl(const StepArgs& s, int64_t n_begin, int64_t n_end) {
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kMaxVecs * kVec) {
    const int64_t cols = std::min<int64_t>(kMaxVecs * kVec, n_end - n0);
    const int nv = static_cast<int>((cols + kVec - 1) / kVec);
    const int last = static_cast<int>(cols - (nv - 1) * kVec);
    const __mmask16 tail = static_cast<__mmask16>((1u << last) - 1u);
    const float* B = s.B + n0;
    const float* bias = s.bias ? s.bias + n0 : nullptr;
    for (int64_t m0 = 0; m0 < s.M; m0 += kMaxRows) {
      const int mr = static_cast<int>(std::min<int64_t>(kMaxRows, s.M - m0));
      const float* A = s.A + m0 * s.lda;
      float* C = s.C + m0 * s.ldc + n0;
      const float* Y = s.Y ? s.Y + m0 * s.ldy + n0 : nullptr;
      switch (mr) {
        case 1: block_rows<1, E>(nv, s.K, A, s.lda, s.a_kstride, B, s.ldb, C, s.ldc, Y, s.ldy, bias, s.act, tail); break;
        case 2: block_rows<2, E>(nv, s.K, A, s.lda, s.a_kstride, B, s.ldb, C, s.ldc, Y, s.ldy, bias, s.act, tail); break;
        case 3: block_rows<3, E>(nv, s.K, A, s.lda, s.a_kstride, B, s.ldb, C, s.ldc, Y, s.ldy, bias, s.act, tail); break;
        default: block_rows<4, E>(nv, s.K, A, s.lda, s.a_kstride, B, s.ldb, C, s.ldc, Y, s.ldy, bias, s.act, tail); break;
      }
    }
  }
}

}  // namespace

void step(const StepArgs& s, int64_t n_begin, int64_t n_end) {
  if (s.M <= 0 || n_end <= n_begin) return;
  switch (s.epilogue) {
    case Epilogue::Activate: return step_impl<Epilogue::Activate>(s, n_begin, n_end);
    case Epilogue::ActGrad: return step_impl<Epilogue::ActGrad>(s, n_begin, n_end);
    case Epilogue::Store: return step_impl<Epilogue::Store>(s, n_begin, n_end);
    case Epilogue::Accumulate: return step_impl<Epilogue::Accumulate>(s, n_begin, n_end);
  }
}

void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rowstride,
          int64_t a_kstride, const float* B, int64_t ldb, float* C, int64_t ldc,
          bool accumulate) {
  if (M <= 0 || N <= 0) return;
  // Output tiles of kTileM x kTileN; K in blocks of kBlockK so that a tile's slice
  // of A and B stays in L2 while the micro-kernel sweeps it.
  constexpr int64_t kTileM = 64, kTileN = 256, kBlockK = 256;
  const int64_t tiles_m = (M + kTileM - 1) / kTileM, tiles_n = (N + kTileN - 1) / kTileN;
  const int64_t flops_per_tile = kTileM * kTileN * std::max<int64_t>(K, 1);
  const int64_t grain = std::max<int64_t>(1, (1 << 20) / flops_per_tile);
  at::parallel_for(0, tiles_m * tiles_n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t m0 = (tile / tiles_n) * kTileM, n0 = (tile % tiles_n) * kTileN;
      StepArgs s;
      s.M = std::min(kTileM, M - m0);
      s.N = N;
      s.lda = a_rowstride;
      s.a_kstride = a_kstride;
      s.ldb = ldb;
      s.C = C + m0 * ldc;
      s.ldc = ldc;
      const int64_t n1 = std::min(N, n0 + kTileN);
      if (K == 0) {
        if (!accumulate)
          for (int64_t r = 0; r < s.M; ++r)
            std::fill(s.C + r * ldc + n0, s.C + r * ldc + n1, 0.f);
        continue;
      }
      for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
        s.K = std::min(kBlockK, K - k0);
        s.A = A + m0 * a_rowstride + k0 * a_kstride;
        s.B = B + k0 * ldb;
        s.epilogue = (k0 == 0 && !accumulate) ? Epilogue::Store : Epilogue::Accumulate;
        step(s, n0, n1);
      }
    }
  });
}

}  // namespace rnnfast::cpu::avx512
