// cell_rows.h instantiated for AVX-512 float32: 16 hidden units per zmm, the tail
// masked, SLEEF's 1-ulp exp and tanh (exported by libtorch_cpu, as torch.tanh uses).
//
// Everything after the target pragma is compiled for AVX-512, so this file includes
// every other header first: only cells.h / cell_rows.h templates, instantiated here
// with this file's own types, get AVX-512 code (no inline function shared with other
// files is emitted from here).
#include "cells_avx512.h"

#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "../kernels/activations.h"

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
  Zmm(float x) : v(_mm512_set1_ps(x)) {}  // NOLINT: implicit, as the scalar V(1) is
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
  static V sigmoid(V x) {
    return V(1.f) / (V(1.f) + Zmm(Sleef_expf16_u10avx512f(_mm512_sub_ps(_mm512_setzero_ps(), x.v))));
  }
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

}  // namespace

void lstm_forward_row(int64_t H, float* gates, const float* rec, const float* b_ih,
                      const float* b_hh, const float* c_prev, float* c, float* m) {
  cpu::lstm_forward_row<Units, float>(H, gates, rec, b_ih, b_hh, c_prev, c, m);
}
void gru_forward_row(int64_t H, float* gates, const float* rec, const float* b_ih,
                     const float* b_hh, const float* h_prev, float* hn, float* h) {
  cpu::gru_forward_row<Units, float>(H, gates, rec, b_ih, b_hh, h_prev, hn, h);
}
void lstm_backward_row(int64_t H, const float* gates, const float* c, const float* c_prev,
                       const float* dm, const float* dc_in, float* dG, float* dc_prev,
                       float* m) {
  cpu::lstm_backward_row<Units, float>(H, gates, c, c_prev, dm, dc_in, dG, dc_prev, m);
}
void gru_backward_row(int64_t H, const float* gates, const float* hn, const float* h_prev,
                      const float* dh, float* dGW, float* dGR, float* dh_prev) {
  cpu::gru_backward_row<Units, float>(H, gates, hn, h_prev, dh, dGW, dGR, dh_prev);
}

}  // namespace rnnfast::cpu::avx512

#pragma GCC pop_options
