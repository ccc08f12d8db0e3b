// cell_rows.h instantiated for AVX-512 float32: 16 hidden units per zmm, the tail
// masked, SLEEF's 1-ulp exp and tanh (exported by libtorch_cpu; torch.tanh uses them).
//
// Only what stands between the target pragmas is compiled for AVX-512: every other
// header is included first, so the only code generated here is cell_rows.h's
// templates instantiated with this file's own types (no inline function shared with
// other files gets an AVX-512 body), and cell_rows() itself is compiled for any CPU.
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "../kernels/activations.h"
#include "row_kernels.h"
#include "step_avx512.h"

extern "C" __m512 Sleef_expf16_u10avx512f(__m512);
extern "C" __m512 Sleef_tanhf16_u10avx512f(__m512);

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,fma,avx2")

#include "cell_rows.h"

namespace rnnfast::cpu::avx512 {
namespace {

// 16 floats with the arithmetic the cell math uses.
struct Zmm {
  __m512 v;
  Zmm() = default;
  Zmm(float x) : v(_mm512_set1_ps(x)) {}  // NOLINT: implicit, like the scalar V(1)
  Zmm(__m512 x) : v(x) {}                 // NOLINT
};
inline Zmm operator+(Zmm a, Zmm b) { return _mm512_add_ps(a.v, b.v); }
inline Zmm operator-(Zmm a, Zmm b) { return _mm512_sub_ps(a.v, b.v); }
inline Zmm operator*(Zmm a, Zmm b) { return _mm512_mul_ps(a.v, b.v); }
inline Zmm operator/(Zmm a, Zmm b) { return _mm512_div_ps(a.v, b.v); }

// One block of up to 16 units; lanes outside `mask` load 0 and are not stored.
struct Masked {
  using V = Zmm;
  __mmask16 mask;
  V load(const float* p) const { return _mm512_maskz_loadu_ps(mask, p); }
  void store(V x, float* p) const { _mm512_mask_storeu_ps(p, mask, x.v); }
  static V sigmoid(V x) { return V(1.f) / (V(1.f) + Zmm(Sleef_expf16_u10avx512f((V(0.f) - x).v))); }
  static V tanh(V x) { return Sleef_tanhf16_u10avx512f(x.v); }
};

struct Units {
  template <typename Body>
  static void for_units(int64_t H, const Body& body) {
    for (int64_t j = 0; j < H; j += 16) {
      const int64_t left = H - j;
      body(Masked{left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1)}, j);
    }
  }
};

constexpr RowKernels<float> kRows = make_row_kernels<Units, float>();

}  // namespace
}  // namespace rnnfast::cpu::avx512

#pragma GCC pop_options

namespace rnnfast::cpu::avx512 {

const RowKernels<float>* cell_rows() { return supported() ? &kRows : nullptr; }

}  // namespace rnnfast::cpu::avx512
