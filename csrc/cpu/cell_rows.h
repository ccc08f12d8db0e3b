// The pointwise rows of the gated cells: kernels/cells.h's math over one row's hidden
// units, for any unit-loop policy U. U::for_units(n, body) calls body(L, j) for unit
// blocks starting at j; L loads and stores one block (L.load(p), L.store(v, p)) and
// supplies the math (decltype(L)::V, ::sigmoid, ::tanh). gated_cpu.cpp instantiates
// the rows with at::vec (any CPU, float and double), cells_avx512.cpp with AVX-512
// (float32): one implementation of each row.
#pragma once

#include <cstdint>

#include "../kernels/cells.h"
#include "row_kernels.h"

namespace rnnfast::cpu {

// Every row works on n hidden units, which may be a slice [u0, u0 + n) of the layer's H
// (a thread's share of a step): the pointers then point at unit u0. Gate k of unit j is
// at k * H + j in the saved gates and gate gradients; the forward rows read their inputs
// (the x-projection gx, the step product rec and the biases) at k * ld + j, which is
// k * H + j for whole rows and k * n + j for a thread's slice in its own buffers.

// LSTM forward of one row: gx (x-projection) + rec (h_prev W_hh^T) + b_ih + b_hh ->
// gates (out: i,f,g,o, gate stride ldg; may be gx itself when ldg == ld), c_prev -> c, m.
template <typename U, typename T>
void lstm_forward_row(int64_t n, const T* gx, const T* rec, int64_t ld, const T* b_ih,
                      const T* b_hh, const T* c_prev, T* gates, int64_t ldg, T* c, T* m) {
  U::for_units(n, [&](auto L, int64_t j) {
    using Ops = decltype(L);
    using V = typename Ops::V;
    V g[4];
    for (int k = 0; k < 4; ++k) {
      const int64_t idx = k * ld + j;
      g[k] = L.load(gx + idx) + L.load(rec + idx) + (L.load(b_ih + idx) + L.load(b_hh + idx));
    }
    V cv, mv;
    Lstm::forward<V, Ops>(g[0], g[1], g[2], g[3], L.load(c_prev + j), cv, mv);
    for (int k = 0; k < 4; ++k) L.store(g[k], gates + k * ldg + j);
    L.store(cv, c + j);
    L.store(mv, m + j);
  });
}

// GRU forward of one row: gx, rec, biases (as above), h_prev -> gates (r,z,n, stride
// ldg), hn, h.
template <typename U, typename T>
void gru_forward_row(int64_t n, const T* gx, const T* rec, int64_t ld, const T* b_ih,
                     const T* b_hh, const T* h_prev, T* gates, int64_t ldg, T* hn, T* h) {
  U::for_units(n, [&](auto L, int64_t j) {
    using Ops = decltype(L);
    using V = typename Ops::V;
    V r = L.load(gx + j) + L.load(b_ih + j) + (L.load(rec + j) + L.load(b_hh + j));
    V z = L.load(gx + ld + j) + L.load(b_ih + ld + j) +
          (L.load(rec + ld + j) + L.load(b_hh + ld + j));
    V nv = L.load(gx + 2 * ld + j) + L.load(b_ih + 2 * ld + j);
    const V hnv = L.load(rec + 2 * ld + j) + L.load(b_hh + 2 * ld + j);
    V hv;
    Gru::forward<V, Ops>(r, z, nv, hnv, L.load(h_prev + j), hv);
    L.store(r, gates + j);
    L.store(z, gates + ldg + j);
    L.store(nv, gates + 2 * ldg + j);
    L.store(hnv, hn + j);
    L.store(hv, h + j);
  });
}

// LSTM backward of one row. dc_in: the carried dc (null: zero). Writes the
// pre-activation gradients dG (4H), dc_prev, and m (for dW_hr) when m is set.
template <typename U, typename T>
void lstm_backward_row(int64_t n, int64_t H, const T* gates, const T* c, const T* c_prev,
                       const T* dm, const T* dc_in, T* dG, T* dc_prev, T* m) {
  U::for_units(n, [&](auto L, int64_t j) {
    using Ops = decltype(L);
    using V = typename Ops::V;
    V g[4];
    for (int k = 0; k < 4; ++k) g[k] = L.load(gates + k * H + j);
    const V cv = L.load(c + j);
    if (m) L.store(g[3] * Ops::tanh(cv), m + j);
    V dcp;
    Lstm::backward<V, Ops>(g[0], g[1], g[2], g[3], cv, L.load(c_prev + j), L.load(dm + j),
                           dc_in ? L.load(dc_in + j) : V(T(0)), dcp);
    for (int k = 0; k < 4; ++k) L.store(g[k], dG + k * H + j);
    L.store(dcp, dc_prev + j);
  });
}

// GRU backward of one row: dG_W (3H), dG_R (3H) and the direct carry dh z.
template <typename U, typename T>
void gru_backward_row(int64_t n, int64_t H, const T* gates, const T* hn, const T* h_prev,
                      const T* dh, T* dGW, T* dGR, T* dh_prev) {
  U::for_units(n, [&](auto L, int64_t j) {
    using Ops = decltype(L);
    using V = typename Ops::V;
    V r = L.load(gates + j), z = L.load(gates + H + j), nv = L.load(gates + 2 * H + j);
    V dn_rec, dhp;
    Gru::backward<V, Ops>(r, z, nv, L.load(hn + j), L.load(h_prev + j), L.load(dh + j),
                          dn_rec, dhp);
    L.store(r, dGW + j);
    L.store(z, dGW + H + j);
    L.store(nv, dGW + 2 * H + j);
    L.store(r, dGR + j);
    L.store(z, dGR + H + j);
    L.store(dn_rec, dGR + 2 * H + j);
    L.store(dhp, dh_prev + j);
  });
}

// dst[j] += src[j], j < n.
template <typename U, typename T>
void add_row(int64_t n, const T* src, T* dst) {
  U::for_units(n, [&](auto L, int64_t j) {
    L.store(L.load(dst + j) + L.load(src + j), dst + j);
  });
}

// h[j] = tanh(z[j] + bias[j]), j < n: the Elman cell's forward (z and h may alias).
template <typename U, typename T>
void tanh_bias_row(int64_t n, const T* z, const T* bias, T* h) {
  U::for_units(n, [&](auto L, int64_t j) {
    L.store(decltype(L)::tanh(L.load(z + j) + L.load(bias + j)), h + j);
  });
}

// The rows above for unit loop U, as a RowKernels table.
template <typename U, typename T>
constexpr RowKernels<T> make_row_kernels() {
  return {&lstm_forward_row<U, T>, &gru_forward_row<U, T>, &lstm_backward_row<U, T>,
          &gru_backward_row<U, T>, &add_row<U, T>, &tanh_bias_row<U, T>};
}

}  // namespace rnnfast::cpu
