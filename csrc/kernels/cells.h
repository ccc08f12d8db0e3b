// The recurrent cells rnnfast computes, and their pointwise math, written once for
// every backend. Framework-free (no ATen), host/device.
//
// A cell's step is  gates = x W_ih^T + b_ih  (all steps at once, one GEMM)
//                   rec   = h_prev W_hh^T     (per step, one GEMM)
//                   pointwise(gates, rec, b_hh, states) -> new states
// so everything that differs between cells is the gate count G, the state count
// and the pointwise forward/backward below. Gate order is torch's: LSTM i,f,g,o;
// GRU r,z,n. The math is templated on the value type V and an Ops policy that
// supplies sigmoid/tanh for V (a scalar, or a SIMD vector on the CPU).
#pragma once

#include <cstdint>

#include "activations.h"

namespace rnnfast {

// nn.RNNBase's mode strings, in this order.
enum class CellKind : int8_t { RnnTanh = 0, RnnRelu = 1, Lstm = 2, Gru = 3 };

RNNFAST_HOST_DEVICE int cell_gates(CellKind k) {
  return k == CellKind::Lstm ? 4 : k == CellKind::Gru ? 3 : 1;
}
// Recurrent states: h, plus c for LSTM.
RNNFAST_HOST_DEVICE int cell_states(CellKind k) { return k == CellKind::Lstm ? 2 : 1; }
RNNFAST_HOST_DEVICE bool is_elman(CellKind k) {
  return k == CellKind::RnnTanh || k == CellKind::RnnRelu;
}
RNNFAST_HOST_DEVICE Activation elman_activation(CellKind k) {
  return k == CellKind::RnnRelu ? Activation::Relu : Activation::Tanh;
}

// LSTM, one hidden unit of one row. Pre-activations a_k = gx_k + rec_k + b_hh_k
// (gx already holds b_ih).
//   i, f, o = sigmoid(a), g = tanh(a);  c = f c_prev + i g;  m = o tanh(c)
// m is h, or with proj_size h = m W_hr^T. Saved for backward: i, f, g, o and c.
struct Lstm {
  static constexpr int kGates = 4;

  template <typename V, typename Ops>
  RNNFAST_HOST_DEVICE static void forward(V& i, V& f, V& g, V& o, V c_prev, V& c, V& m) {
    i = Ops::sigmoid(i);
    f = Ops::sigmoid(f);
    g = Ops::tanh(g);
    o = Ops::sigmoid(o);
    c = f * c_prev + i * g;
    m = o * Ops::tanh(c);
  }

  // Given dm (the gradient of m) and dc (of c, from the next step or c_n), writes the
  // pre-activation gradients into i, f, g, o (in place of the gates) and dc_prev.
  template <typename V, typename Ops>
  RNNFAST_HOST_DEVICE static void backward(V& i, V& f, V& g, V& o, V c, V c_prev, V dm, V dc,
                                           V& dc_prev) {
    const V one(1);
    const V tc = Ops::tanh(c);
    dc = dc + dm * o * (one - tc * tc);
    const V di = dc * g, df = dc * c_prev, dg = dc * i, d_o = dm * tc;
    dc_prev = dc * f;
    i = di * i * (one - i);
    f = df * f * (one - f);
    g = dg * (one - g * g);
    o = d_o * o * (one - o);
  }
};

// GRU as torch computes it ("linear before reset": b_hn stays inside r * (.)).
//   r, z = sigmoid(gx + rec + b_hh);  hn = rec_n + b_hn;  n = tanh(gx_n + r hn)
//   h = n + z (h_prev - n)         (= (1 - z) n + z h_prev)
// Saved for backward: r, z, n and hn.
struct Gru {
  static constexpr int kGates = 3;

  template <typename V, typename Ops>
  RNNFAST_HOST_DEVICE static void forward(V& r, V& z, V& n, V hn, V h_prev, V& h) {
    r = Ops::sigmoid(r);
    z = Ops::sigmoid(z);
    n = Ops::tanh(n + r * hn);
    h = n + z * (h_prev - n);
  }

  // Given dh, writes into r, z, n the gradients of the x-side pre-activations
  // (dG_W, for W_ih, b_ih and the input), into dn_rec the n block of the h-side ones
  // (dG_R = dG_W except n: dn * r, for W_hh and b_hh), and the direct carry dh z.
  template <typename V, typename Ops>
  RNNFAST_HOST_DEVICE static void backward(V& r, V& z, V& n, V hn, V h_prev, V dh, V& dn_rec,
                                           V& dh_prev) {
    const V one(1);
    const V dn = dh * (one - z) * (one - n * n);
    const V dz = dh * (h_prev - n) * z * (one - z);
    const V dr = dn * hn * r * (one - r);
    dn_rec = dn * r;
    dh_prev = dh * z;
    r = dr;
    z = dz;
    n = dn;
  }
};

// Which rows of step i (in processing order) of direction d do what. Rows are the
// batch indices b < rows of the step's time t, stored at [offset, offset + rows) of
// the time-major 2-D view. Rows b < split continue from the step processed just
// before (at prev_offset + b); rows b >= split start from hx[b]. Rows in
// [end_begin, end_end) end here: their state becomes h_n[b] (c_n[b]).
struct StepPlan {
  int64_t t, rows, offset, split, prev_offset, end_begin, end_end;
};

RNNFAST_HOST_DEVICE StepPlan step_plan(int64_t T, const int64_t* batch_sizes,
                                       const int64_t* offsets, int64_t d, int64_t i) {
  StepPlan p;
  if (d == 0) {  // t = 0 .. T-1; a sequence ends at its last step
    p.t = i;
    p.split = p.t > 0 ? batch_sizes[p.t] : 0;
    p.prev_offset = p.t > 0 ? offsets[p.t - 1] : 0;
    p.end_begin = p.t + 1 < T ? batch_sizes[p.t + 1] : 0;
    p.end_end = batch_sizes[p.t];
  } else {  // t = T-1 .. 0; every sequence ends at t = 0
    p.t = T - 1 - i;
    p.split = p.t + 1 < T ? batch_sizes[p.t + 1] : 0;
    p.prev_offset = p.t + 1 < T ? offsets[p.t + 1] : 0;
    p.end_begin = 0;
    p.end_end = p.t == 0 ? batch_sizes[0] : 0;
  }
  p.rows = batch_sizes[p.t];
  p.offset = offsets[p.t];
  return p;
}

}  // namespace rnnfast
