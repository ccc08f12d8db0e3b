// The gated cells' pointwise rows (cell_rows.h) compiled for AVX-512, float32. Call
// only where avx512::supported(). Arguments as in cell_rows.h.
#pragma once

#include <cstdint>

namespace rnnfast::cpu::avx512 {

void lstm_forward_row(int64_t H, float* gates, const float* rec, const float* b_ih,
                      const float* b_hh, const float* c_prev, float* c, float* m);
void gru_forward_row(int64_t H, float* gates, const float* rec, const float* b_ih,
                     const float* b_hh, const float* h_prev, float* hn, float* h);
void lstm_backward_row(int64_t H, const float* gates, const float* c, const float* c_prev,
                       const float* dm, const float* dc_in, float* dG, float* dc_prev, float* m);
void gru_backward_row(int64_t H, const float* gates, const float* hn, const float* h_prev,
                      const float* dh, float* dGW, float* dGR, float* dh_prev);

}  // namespace rnnfast::cpu::avx512
