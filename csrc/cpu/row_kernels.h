// The gated cells' pointwise rows (cell_rows.h) as a table of functions, one table per
// instruction set, chosen once per call. Arguments as in cell_rows.h.
#pragma once

#include <cstdint>

namespace rnnfast::cpu {

template <typename T>
struct RowKernels {
  void (*lstm_forward)(int64_t n, const T* gx, const T* rec, int64_t ld, const T* b_ih,
                       const T* b_hh, const T* c_prev, T* gates, int64_t ldg, T* c, T* m);
  void (*gru_forward)(int64_t n, const T* gx, const T* rec, int64_t ld, const T* b_ih,
                      const T* b_hh, const T* h_prev, T* gates, int64_t ldg, T* hn, T* h);
  void (*lstm_backward)(int64_t n, int64_t H, const T* gates, const T* c, const T* c_prev,
                        const T* dm, const T* dc_in, T* dG, T* dc_prev, T* m);
  void (*gru_backward)(int64_t n, int64_t H, const T* gates, const T* hn, const T* h_prev,
                       const T* dh, T* dGW, T* dGR, T* dh_prev);
  void (*add)(int64_t n, const T* src, T* dst);
  void (*tanh_bias)(int64_t n, const T* z, const T* bias, T* h);  // Elman; z may be h
};

// The best rows for T on this CPU: AVX-512 or AVX2 for float32 where the CPU has them,
// at::vec otherwise (gated_cpu.cpp).
template <typename T>
const RowKernels<T>& best_rows();

// float32 rows compiled for AVX-512 (cell_rows_avx512.cpp) and for AVX2 + FMA
// (cell_rows_avx2.cpp): null where this CPU lacks the instruction set.
namespace avx512 {
const RowKernels<float>* cell_rows();
}
namespace avx2 {
const RowKernels<float>* cell_rows();
}

}  // namespace rnnfast::cpu
