// cell_rows.h instantiated for AVX2 + FMA float32: 8 hidden units per ymm (the tail
// masked), with a rational tanh (and sigmoid from it) inlined into the rows.
// Same structure as cell_rows_avx512.cpp: only cell_rows.h's templates, instantiated
// here with this file's types, are compiled for AVX2.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "../kernels/activations.h"
#include "row_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

#include "cell_rows.h"

namespace rnnfast::cpu::avx2 {
namespace {

// 8 floats with the arithmetic the cell math uses.
struct Ymm {
  __m256 v;
  Ymm() = default;
  Ymm(float x) : v(_mm256_set1_ps(x)) {}  // NOLINT: implicit, like the scalar V(1)
  Ymm(__m256 x) : v(x) {}                 // NOLINT
};
inline Ymm operator+(Ymm a, Ymm b) { return _mm256_add_ps(a.v, b.v); }
inline Ymm operator-(Ymm a, Ymm b) { return _mm256_sub_ps(a.v, b.v); }
inline Ymm operator*(Ymm a, Ymm b) { return _mm256_mul_ps(a.v, b.v); }
inline Ymm operator/(Ymm a, Ymm b) { return _mm256_div_ps(a.v, b.v); }

// tanh(x) = x P(x^2) / Q(x^2) for |x| < 9, and +-1 from there on (where float32 rounds
// tanh to +-1): a rational minimax fit of the relative error (tools/fit_tanh.py), on |x|
// with x's sign put back, at most 1 in magnitude. Measured against double tanh with these
// FMAs: largest error 3.1e-7 (about 5 ulp near +-1), 3 ns per 8 floats here against 9
// for SLEEF's 3.5-ulp tanh and 10 for SLEEF's exp plus a divide per sigmoid, which were
// the largest part of the LSTM / GRU pointwise rows. sigmoid(x) = (1 + tanh(x / 2)) / 2:
// absolute error 2e-7. NaN stays NaN (min_ps returns its second operand when either is).
inline __m256 tanh_ps(__m256 x) {
  constexpr float p[7] = {0.99999999338535428f,   0.13084012641436238f,
                          0.0031039590645593109f, 1.1154338261252733e-05f,
                          -2.0225347670104952e-08f, 5.2780068187514153e-11f,
                          -8.4888589106643897e-14f};
  constexpr float q[4] = {1.f, 0.46417339742869596f, 0.024495189716563334f,
                          0.00025461493840744351f};
  const __m256 sign_bit = _mm256_set1_ps(-0.f), one = _mm256_set1_ps(1.f);
  const __m256 nine = _mm256_set1_ps(9.f);
  const __m256 ax = _mm256_andnot_ps(sign_bit, x);
  const __m256 a = _mm256_min_ps(nine, ax);
  const __m256 t = _mm256_mul_ps(a, a);
  __m256 num = _mm256_set1_ps(p[6]);
  #pragma GCC unroll 8
  for (int i = 5; i >= 0; --i) num = _mm256_fmadd_ps(num, t, _mm256_set1_ps(p[i]));
  __m256 den = _mm256_set1_ps(q[3]);
  #pragma GCC unroll 8
  for (int i = 2; i >= 0; --i) den = _mm256_fmadd_ps(den, t, _mm256_set1_ps(q[i]));
  __m256 y = _mm256_min_ps(one, _mm256_div_ps(_mm256_mul_ps(a, num), den));
  y = _mm256_blendv_ps(y, one, _mm256_cmp_ps(ax, nine, _CMP_GE_OQ));
  return _mm256_or_ps(y, _mm256_and_ps(sign_bit, x));
}

struct Math {
  using V = Ymm;
  static V sigmoid(V x) {
    const __m256 half = _mm256_set1_ps(0.5f);
    return _mm256_fmadd_ps(half, tanh_ps(_mm256_mul_ps(half, x.v)), half);
  }
  static V tanh(V x) { return tanh_ps(x.v); }
};

// A full block of 8 units: plain loads and stores (AMD's masked stores are microcoded,
// tens of cycles each).
struct Full : Math {
  V load(const float* p) const { return _mm256_loadu_ps(p); }
  void store(V x, float* p) const { _mm256_storeu_ps(p, x.v); }
};

// The last block of fewer than 8 units; lanes outside the first `n` load 0 and are not stored.
struct Masked : Math {
  __m256i mask;
  V load(const float* p) const { return _mm256_maskload_ps(p, mask); }
  void store(V x, float* p) const { _mm256_maskstore_ps(p, mask, x.v); }
};

struct Units {
  template <typename Body>
  static void for_units(int64_t H, const Body& body) {
    int64_t j = 0;
    for (; j + 8 <= H; j += 8) body(Full{}, j);
    if (j < H) {
      const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
      body(Masked{{}, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(H - j)), lane)}, j);
    }
  }
};

constexpr RowKernels<float> kRows = make_row_kernels<Units, float>();

}  // namespace
}  // namespace rnnfast::cpu::avx2

#pragma GCC pop_options

namespace rnnfast::cpu::avx2 {

const RowKernels<float>* cell_rows() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok ? &kRows : nullptr;
}

}  // namespace rnnfast::cpu::avx2
