// cell_rows.h instantiated for AVX2 + FMA float32: 8 hidden units per ymm (the tail
// masked), SLEEF's 1-ulp exp and 3.5-ulp tanh (exported by libtorch_cpu).
// Same structure as cell_rows_avx512.cpp: only cell_rows.h's templates, instantiated
// here with this file's types, are compiled for AVX2.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "../kernels/activations.h"
#include "row_kernels.h"

extern "C" __m256 Sleef_expf8_u10avx2(__m256);
extern "C" __m256 Sleef_tanhf8_u35avx2(__m256);

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

// The math on 8 floats (SLEEF's vector exp and tanh). tanh is SLEEF's 3.5-ulp variant:
// 11 ns per 8 floats here against 27 for the 1-ulp one torch.tanh uses (measured max
// relative error 1.3e-7 over [-5, 5]); it was the largest single cost of the LSTM
// pointwise rows (two tanh per unit forward, one backward).
struct Math {
  using V = Ymm;
  static V sigmoid(V x) { return V(1.f) / (V(1.f) + Ymm(Sleef_expf8_u10avx2((V(0.f) - x).v))); }
  static V tanh(V x) { return Sleef_tanhf8_u35avx2(x.v); }
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
