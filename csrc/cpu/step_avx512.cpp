#include "step_avx512.h"

#include <immintrin.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "parallel_tiles.h"

#define RNNFAST_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma,avx2")))
#define RNNFAST_AVX512_BF16 \
  __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma,avx2,avx512bf16")))
#define RNNFAST_INLINE inline __attribute__((always_inline))

// GCC's own intrinsic headers self-initialise the undefined vector behind masked loads
// (`__m512 __Y = __Y;`), which -Wmaybe-uninitialized reports once per instantiation.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

// torch's libtorch_cpu exports SLEEF: its 1-ulp and 3.5-ulp AVX-512 tanh.
extern "C" __m512 Sleef_tanhf16_u10avx512f(__m512);
extern "C" __m512 Sleef_tanhf16_u35avx512f(__m512);

namespace rnnfast::cpu::avx512 {

using c10::BFloat16;

bool supported() {
  static const bool ok = __builtin_cpu_supports("avx512f") &&
                         __builtin_cpu_supports("avx512dq") &&
                         __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
  return ok;
}

bool bf16_supported() {
  static const bool ok = supported() && __builtin_cpu_supports("avx512bf16");
  return ok;
}

namespace {

constexpr int kVec = 16;     // floats per zmm
constexpr int kMaxRows = 4;  // rows per register block
constexpr int kMaxVecs = 4;  // zmm per row per register block (64 columns)

// 16 elements of In (masked) as float32.
RNNFAST_AVX512 RNNFAST_INLINE __m512 load(const float* p, __mmask16 m) {
  return _mm512_maskz_loadu_ps(m, p);
}
RNNFAST_AVX512 RNNFAST_INLINE __m512 load(const BFloat16* p, __mmask16 m) {
  const __m512i u = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}

// Stores 16 float32 (masked) as In; bf16 rounds like c10::BFloat16 (nearest even,
// NaN -> 0x7FC0), so results equal an ATen conversion of the float32 values.
RNNFAST_AVX512 RNNFAST_INLINE void store(float* p, __mmask16 m, __m512 v) {
  _mm512_mask_storeu_ps(p, m, v);
}
RNNFAST_AVX512 RNNFAST_INLINE void store(BFloat16* p, __mmask16 m, __m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(
      _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q),
                            _mm512_set1_epi32(0x7FC0));
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(r));
}

// acc = 0.
template <int MR, int NV>
RNNFAST_AVX512 RNNFAST_INLINE void zero_acc(__m512 (&acc)[MR][NV]) {
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
}

// The epilogue of the MR x NV register block at row m0, column n0 of the step `s` (see
// Epilogue); the last vector of each row is masked by `tail`.
template <typename In, int MR, int NV, Epilogue E>
RNNFAST_AVX512 RNNFAST_INLINE void finish(__m512 (&acc)[MR][NV], const StepArgsT<In>& s,
                                          int64_t m0, int64_t n0, __mmask16 tail) {
  float* C = s.C + m0 * s.ldc + n0;
  In* O = s.O ? s.O + m0 * s.ldo + n0 : nullptr;
  const In* Y = s.Y ? s.Y + m0 * s.ldy + n0 : nullptr;
  const float* bias = s.bias ? s.bias + n0 : nullptr;
  const int64_t ldc = s.ldc, ldo = s.ldo, ldy = s.ldy;
  const Activation act = s.act;
  const __m512 zero = _mm512_setzero_ps();
  const __m512 one = _mm512_set1_ps(1.0f);
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) {
    float* cr = C + r * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __mmask16 m = v + 1 == NV ? tail : __mmask16(0xFFFF);
      if constexpr (E == Epilogue::Activate) {
        __m512 z = _mm512_add_ps(load(cr + v * kVec, m), acc[r][v]);
        z = _mm512_add_ps(z, load(bias + v * kVec, m));
        // max(0, z) returns z when z is NaN: NaN propagates as in torch.relu. A bf16
        // output keeps 8 bits: the 3.5-ulp tanh (half the cost here) rounds the same
        // but for rare ties; float32 outputs keep the 1-ulp one, as torch.tanh.
        const __m512 h = act != Activation::Tanh ? _mm512_max_ps(zero, z)
                         : std::is_same_v<In, float> ? Sleef_tanhf16_u10avx512f(z)
                                                     : Sleef_tanhf16_u35avx512f(z);
        store(O + r * ldo + v * kVec, m, h);
      } else if constexpr (E == Epilogue::ActGrad) {
        const __m512 y = load(Y + r * ldy + v * kVec, m);
        const __m512 d = _mm512_add_ps(load(cr + v * kVec, m), acc[r][v]);
        // relu: torch's threshold_backward, a select: 0 where y <= 0 (ordered compare,
        // so a NaN y keeps its gradient), the gradient elsewhere.
        const __m512 g = act == Activation::Tanh
                             ? _mm512_mul_ps(d, _mm512_fnmadd_ps(y, y, one))
                             : _mm512_mask_mov_ps(d, _mm512_cmp_ps_mask(y, zero, _CMP_LE_OQ), zero);
        store(cr + v * kVec, m, g);
        if (O) store(O + r * ldo + v * kVec, m, g);
      } else if constexpr (E == Epilogue::Accumulate) {
        store(cr + v * kVec, m, _mm512_add_ps(load(cr + v * kVec, m), acc[r][v]));
      } else {
        store(cr + v * kVec, m, acc[r][v]);
      }
    }
  }
}

// MR rows x NV vectors of C, float32 operands.
template <int MR, int NV, Epilogue E>
RNNFAST_AVX512 void block(const StepArgs& s, int64_t m0, int64_t n0, __mmask16 tail) {
  __m512 acc[MR][NV];
  zero_acc<MR, NV>(acc);

  const float* A = s.A + m0 * s.lda;
  const float* B = s.B + n0;
  const int64_t lda = s.lda, aks = s.a_kstride, ldb = s.ldb;
  for (int64_t k = 0; k < s.K; ++k) {
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
  finish<float, MR, NV, E>(acc, s, m0, n0, tail);
}

// acc[r][v] += the products of k-pair `bp` (packed B, NV vectors) with A pairs a[r].
template <int MR, int NV>
RNNFAST_AVX512_BF16 RNNFAST_INLINE void dot_pair(__m512 (&acc)[MR][NV], const uint16_t* bp,
                                                 const uint32_t (&a)[MR], __mmask16 tail) {
  __m512i b[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v)
    b[v] = v + 1 == NV ? _mm512_maskz_loadu_epi32(tail, bp + 2 * v * kVec)
                       : _mm512_loadu_si512(bp + 2 * v * kVec);
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) {
    const __m512i ar = _mm512_set1_epi32(static_cast<int>(a[r]));
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)ar, (__m512bh)b[v]);
  }
}

// MR rows x NV vectors of C, bf16 operands: one vdpbf16ps per k-pair and vector.
template <int MR, int NV, Epilogue E>
RNNFAST_AVX512_BF16 void block(const StepArgsBf16& s, int64_t m0, int64_t n0, __mmask16 tail) {
  __m512 acc[MR][NV];
  zero_acc<MR, NV>(acc);

  const uint16_t* A = reinterpret_cast<const uint16_t*>(s.A) + m0 * s.lda;
  const uint16_t* B = reinterpret_cast<const uint16_t*>(s.B) + 2 * n0;
  const int64_t lda = s.lda, ldb = s.ldb, pairs = s.K / 2;
  uint32_t a[MR];
  for (int64_t p = 0; p < pairs; ++p) {
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) std::memcpy(&a[r], A + r * lda + 2 * p, sizeof(uint32_t));
    dot_pair<MR, NV>(acc, B + p * ldb, a, tail);
  }
  if (s.K % 2) {  // the last k pairs with the zero that pack_pairs put in B
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) a[r] = A[r * lda + s.K - 1];
    dot_pair<MR, NV>(acc, B + pairs * ldb, a, tail);
  }
  finish<BFloat16, MR, NV, E>(acc, s, m0, n0, tail);
}

template <typename In, int MR, Epilogue E>
void block_rows(int nv, const StepArgsT<In>& s, int64_t m0, int64_t n0, __mmask16 tail) {
  switch (nv) {
    case 1: return block<MR, 1, E>(s, m0, n0, tail);
    case 2: return block<MR, 2, E>(s, m0, n0, tail);
    case 3: return block<MR, 3, E>(s, m0, n0, tail);
    default: return block<MR, 4, E>(s, m0, n0, tail);
  }
}

template <typename In, Epilogue E>
void step_impl(const StepArgsT<In>& s, int64_t n_begin, int64_t n_end) {
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kMaxVecs * kVec) {
    const int64_t cols = std::min<int64_t>(kMaxVecs * kVec, n_end - n0);
    const int nv = static_cast<int>((cols + kVec - 1) / kVec);
    const int last = static_cast<int>(cols - (nv - 1) * kVec);
    const __mmask16 tail = static_cast<__mmask16>((1u << last) - 1u);
    for (int64_t m0 = 0; m0 < s.M; m0 += kMaxRows) {
      switch (std::min<int64_t>(kMaxRows, s.M - m0)) {
        case 1: block_rows<In, 1, E>(nv, s, m0, n0, tail); break;
        case 2: block_rows<In, 2, E>(nv, s, m0, n0, tail); break;
        case 3: block_rows<In, 3, E>(nv, s, m0, n0, tail); break;
        default: block_rows<In, 4, E>(nv, s, m0, n0, tail); break;
      }
    }
  }
}

template <typename In>
void step_any(const StepArgsT<In>& s, int64_t n_begin, int64_t n_end) {
  if (s.M <= 0 || n_end <= n_begin) return;
  switch (s.epilogue) {
    case Epilogue::Activate: return step_impl<In, Epilogue::Activate>(s, n_begin, n_end);
    case Epilogue::ActGrad: return step_impl<In, Epilogue::ActGrad>(s, n_begin, n_end);
    case Epilogue::Store: return step_impl<In, Epilogue::Store>(s, n_begin, n_end);
    case Epilogue::Accumulate: return step_impl<In, Epilogue::Accumulate>(s, n_begin, n_end);
  }
}

// Output tiles of kTileM x kTileN; K in blocks of kBlockK so that a tile's slice of A
// and B stays in L2 while the micro-kernel sweeps it. `set_k_block(s, k0, kb)` points
// the step's A and B at the k-block starting at k0.
template <typename In, typename SetKBlock>
void tiled_gemm(int64_t M, int64_t N, int64_t K, int64_t block_k, StepArgsT<In> proto,
                float* C, int64_t ldc, bool accumulate, SetKBlock set_k_block) {
  constexpr int64_t kTileM = 64, kTileN = 256;
  const int64_t flops_per_tile = kTileM * kTileN * std::max<int64_t>(K, 1);
  const int64_t grain = std::max<int64_t>(1, (1 << 20) / flops_per_tile);
  parallel_tiles(M, N, kTileM, kTileN, grain, [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    StepArgsT<In> s = proto;
    s.M = m1 - m0;
    s.N = N;
    s.C = C + m0 * ldc;
    s.ldc = ldc;
    if (K == 0) {
      if (!accumulate)
        for (int64_t r = 0; r < s.M; ++r) std::fill(s.C + r * ldc + n0, s.C + r * ldc + n1, 0.f);
      return;
    }
    for (int64_t k0 = 0; k0 < K; k0 += block_k) {
      s.K = std::min(block_k, K - k0);
      set_k_block(s, m0, k0);
      s.epilogue = (k0 == 0 && !accumulate) ? Epilogue::Store : Epilogue::Accumulate;
      step_any<In>(s, n0, n1);
    }
  });
}

}  // namespace

void step(const StepArgs& s, int64_t n_begin, int64_t n_end) { step_any<float>(s, n_begin, n_end); }
void step(const StepArgsBf16& s, int64_t n_begin, int64_t n_end) {
  step_any<BFloat16>(s, n_begin, n_end);
}

void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rowstride,
          int64_t a_kstride, const float* B, int64_t ldb, float* C, int64_t ldc,
          bool accumulate) {
  StepArgs proto;
  proto.lda = a_rowstride;
  proto.a_kstride = a_kstride;
  proto.ldb = ldb;
  tiled_gemm<float>(M, N, K, 256, proto, C, ldc, accumulate,
                    [&](StepArgs& s, int64_t m0, int64_t k0) {
                      s.A = A + m0 * a_rowstride + k0 * a_kstride;
                      s.B = B + k0 * ldb;
                    });
}

void gemm(int64_t M, int64_t N, int64_t K, const BFloat16* A, int64_t lda, const BFloat16* B,
          int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  StepArgsBf16 proto;
  proto.lda = lda;
  proto.ldb = ldb;
  // 512 k (256 pairs): the same bytes of B per block as the float32 kernel's 256 k;
  // even, so that a block never splits a pair.
  tiled_gemm<BFloat16>(M, N, K, 512, proto, C, ldc, accumulate,
                       [&](StepArgsBf16& s, int64_t m0, int64_t k0) {
                         s.A = A + m0 * lda + k0;
                         s.B = B + (k0 / 2) * ldb;
                       });
}

namespace {

// out[2n + j] = row_j[n] for n in [n0, n1), j = 0, 1 (row_1 == nullptr: zeros).
RNNFAST_AVX512 void interleave_rows(const BFloat16* row0, const BFloat16* row1, int64_t n0,
                                    int64_t n1, BFloat16* out) {
  alignas(64) static const uint16_t kLow[32] = {0,  32, 1,  33, 2,  34, 3,  35, 4,  36, 5,
                                                37, 6,  38, 7,  39, 8,  40, 9,  41, 10, 42,
                                                11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static const uint16_t kHigh[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21,
                                                 53, 22, 54, 23, 55, 24, 56, 25, 57, 26, 58,
                                                 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  const __m512i low = _mm512_load_si512(kLow), high = _mm512_load_si512(kHigh);
  auto mask = [](int64_t n) { return n >= 32 ? ~__mmask32(0) : (__mmask32(1) << n) - 1; };
  for (int64_t n = n0; n < n1; n += 32) {
    const int64_t cnt = std::min<int64_t>(32, n1 - n);
    const __m512i a = _mm512_maskz_loadu_epi16(mask(cnt), row0 + n);
    const __m512i b = row1 ? _mm512_maskz_loadu_epi16(mask(cnt), row1 + n) : _mm512_setzero_si512();
    _mm512_mask_storeu_epi16(out + 2 * n, mask(2 * cnt), _mm512_permutex2var_epi16(a, low, b));
    if (cnt > 16)
      _mm512_mask_storeu_epi16(out + 2 * n + 32, mask(2 * cnt - 32),
                               _mm512_permutex2var_epi16(a, high, b));
  }
}

}  // namespace

void pack_pairs(int64_t K, int64_t N, const BFloat16* S, int64_t k_stride, int64_t n_stride,
                BFloat16* P) {
  const int64_t pairs = (K + 1) / 2;
  if (n_stride == 1) {  // rows of S are k: interleave row pairs, vectorized
    at::parallel_for(0, pairs, std::max<int64_t>(1, 32768 / std::max<int64_t>(N, 1)),
                     [&](int64_t p0, int64_t p1) {
                       for (int64_t p = p0; p < p1; ++p)
                         interleave_rows(S + 2 * p * k_stride,
                                         2 * p + 1 < K ? S + (2 * p + 1) * k_stride : nullptr, 0,
                                         N, P + p * 2 * N);
                     });
    return;
  }
  // Columns of S are k (S = W, B = W^T): a pair is two adjacent elements when
  // k_stride == 1, i.e. this is a transpose of 32-bit words, blocked for L1.
  const BFloat16 zero(0.f);
  constexpr int64_t kPb = 32, kNb = 32;
  parallel_tiles(pairs, N, kPb, kNb, 16, [&](int64_t p0, int64_t p1, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t k = 2 * p;
        P[p * 2 * N + 2 * n] = S[k * k_stride + n * n_stride];
        P[p * 2 * N + 2 * n + 1] = k + 1 < K ? S[(k + 1) * k_stride + n * n_stride] : zero;
      }
  });
}

void transpose(int64_t R, int64_t C, const BFloat16* S, int64_t ld, BFloat16* D) {
  constexpr int64_t kTile = 64;
  parallel_tiles(R, C, kTile, kTile, 4, [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t r = r0; r < r1; ++r) D[c * R + r] = S[r * ld + c];
  });
}

}  // namespace rnnfast::cpu::avx512
