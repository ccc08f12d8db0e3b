// Time loops of the gated cells (LSTM with proj_size, GRU) for the sequence driver
// (sequence_cpu.h), which does the input projection and the weight gradients.
//
// Per direction, on the time-major 2-D view:
//   forward   per step:  Rec = h_prev W_hh^T            one GEMM (rows x G*H)
//                        cell pointwise (kernels/cells.h) -> gates, c / hn, h or m
//                        h = m W_hr^T  (LSTM with proj_size)
//   backward  per step (reverse order): dh = dY + carried dh (or grad_h_n where the
//             sequence ended), [dm = dh W_hr], cell pointwise backward -> dG_W, dG_R,
//             carried dc / GRU's direct z*dh; carried dh (+)= dG_R W_hh
// The carried gradients live in grad_hx's rows (indexed by batch row b, which is the
// same sequence at every step): after the last step they are grad_hx itself.
// Nothing is allocated inside a time loop; every row of every step has one owner
// (no reductions across threads), so results are deterministic.
#include "sequence_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "../kernels/cells.h"
#include "cell_rows.h"
#include "row_kernels.h"
#include "cpu_common.h"
#include "small_gemm.h"
#include "thread_teams.h"

namespace rnnfast::cpu {
namespace {

using at::vec::Vectorized;

// The cell math's Ops policies: one scalar lane, or one SIMD vector.
template <typename T>
struct Lane {
  using V = T;
  static constexpr int64_t size = 1;
  static V load(const T* p) { return *p; }
  static void store(V v, T* p) { *p = v; }
  static V sigmoid(V x) { return T(1) / (T(1) + std::exp(-x)); }
  static V tanh(V x) { return std::tanh(x); }
};

template <typename T>
struct Simd {
  using V = Vectorized<T>;
  static constexpr int64_t size = V::size();
  static V load(const T* p) { return V::loadu(p); }
  static void store(V v, T* p) { v.store(p); }
  static V sigmoid(V x) { return V(T(1)) / (V(T(1)) + (V(T(0)) - x).exp()); }
  static V tanh(V x) { return x.tanh(); }
};

// cell_rows.h's unit loop on any CPU: at::vec vectors, then the scalar tail.
template <typename T>
struct VecUnits {
  template <typename Body>
  static void for_units(int64_t H, const Body& body) {
    int64_t j = 0;
    for (; j + Simd<T>::size <= H; j += Simd<T>::size) body(Simd<T>{}, j);
    for (; j < H; ++j) body(Lane<T>{}, j);
  }
};

// body(b) for the rows of a step, spread over threads when the step is large.
template <typename Body>
void for_rows(int64_t rows, int64_t work_per_row, const Body& body) {
  const int64_t grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(work_per_row, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) body(b);
  });
}

// C (M x N) (+)= A (M x K, row stride lda) @ B: the per-step GEMMs. B is K x N
// row-major, or with trans_b N x K (then always BLAS). float32 on AVX-512 uses
// the step kernel (one thread), or for large steps the tiled kernel spread over
// threads; the choice depends on the sizes only, so the summation order does not
// depend on the thread count. With B in panels (packed_steps) the packed kernel of
// small_gemm.h; unpacked float32 steps of at most kSmallGemmMaxRows rows on AVX2 CPUs
// the small GEMM. The rest uses BLAS.
template <typename T>
void step_gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
               int64_t ldb, bool trans_b, T* C, int64_t ldc, bool accumulate,
               const T* panels = nullptr) {
  if (M == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (panels) {
      static const SmallGemmPacked packed = avx2::small_gemm_packed();
      packed(M, N, K, A, lda, panels, C, ldc, accumulate);
      return;
    }
  }
  const T beta = accumulate ? T(1) : T(0);
  if (trans_b) {
    gemm_sized<T>(false, true, M, N, K, T(1), A, lda, B, ldb, beta, C, ldc);
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    if (avx512::supported()) {
      if (M * N * K >= (int64_t(1) << 21)) {
        avx512::gemm(M, N, K, A, lda, 1, B, ldb, C, ldc, accumulate);
        return;
      }
      avx512::StepArgs a;
      a.M = M;
      a.N = N;
      a.K = K;
      a.A = A;
      a.lda = lda;
      a.B = B;
      a.ldb = ldb;
      a.C = C;
      a.ldc = ldc;
      a.epilogue = accumulate ? avx512::Epilogue::Accumulate : avx512::Epilogue::Store;
      avx512::step(a, 0, N);
      return;
    }
    static const SmallGemm small = avx2::small_gemm();
    if (M <= kSmallGemmMaxRows && small) {
      small(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
      return;
    }
  }
  gemm_sized<T>(false, false, M, N, K, T(1), A, lda, B, ldb, beta, C, ldc);
}

// Where pack_step_weights (float32), each thread packs its share of W_hh once per layer
// in panels for the packed kernel (small_gemm.h: 75-87 GFLOP/s per core at every batch
// size, against MKL's 50-58 on these shapes), and a unidirectional layer then splits
// each step's hidden units over a team (thread_teams.h).
template <typename T>
bool packed_steps(const RnnSizes& s) {
  return std::is_same_v<T, float> && pack_step_weights(s);
}

// With packed steps the forward also computes the input projection, a block of steps at a
// time, on the threads that run the steps; not across a projection (proj_size), whose
// layer runs its steps on one thread: MKL's projection over all rows uses every thread.
template <typename T>
bool blocked_projection(const RnnSizes& s) {
  return packed_steps<T>(s) && !s.has_proj;
}

// Row b of step p starts from the previous step's row of `out` (row stride ld), or from
// row b of init (row stride ld_init).
template <typename T>
const T* state_before(const StepPlan& p, int64_t b, const T* out, int64_t ld, const T* init,
                      int64_t ld_init) {
  return b < p.split ? out + (p.prev_offset + b) * ld : init + b * ld_init;
}

// The columns [q0, q0 + Q) of h (P wide) that the thread owning hidden units [u0, u1)
// writes forward and carries backward: its units, or all P after a projection (which
// runs on one thread).
inline std::pair<int64_t, int64_t> h_columns(const RnnSizes& s, int64_t u0, int64_t u1) {
  if (s.has_proj) return {0, s.P};
  return {u0, u1 - u0};
}

// One layer-direction's weights as one thread's time loop reads them.
template <typename T>
struct GatedWeights {
  const T* w_ih = nullptr;  // (G*H, I_l)
  const T* w_hh = nullptr;  // (G*H, P)
  const T* w_hr = nullptr;  // (P, H) or null
  std::vector<T> w_hh_t;    // (P, G*H), unless in place or in panels
  std::vector<T> w_hr_t;    // (H, P), unless in place
  // Forward: the biases of this thread's units [u0, u1), gate-major (G*U, gate k of unit
  // j at k * U + j, U = u1 - u0), zeros without biases.
  std::vector<T> b_ih, b_hh;
  bool in_place = false;    // the forward reads w_hh / w_hr transposed, where they are
  // With packed_steps: this thread's B operand of the per-step product in panels.
  // Forward: the G gate columns of its units of W_hh^T (P x G*U, gate-major); backward:
  // its columns of W_hh (G*H x U, or all P with proj_size).
  std::vector<T> panels;
  // With blocked_projection, forward: the same columns of W_ih^T (I_l x G*U), for the
  // input projection of a block of steps at a time.
  std::vector<T> ih_panels;

  const T* rec_panels() const { return panels.empty() ? nullptr : panels.data(); }

  // The B operands of the forward's per-step GEMMs: (pointer, ld, transposed).
  std::tuple<const T*, int64_t, bool> rec_b(int64_t GH, int64_t P) const {
    return in_place ? std::tuple{w_hh, P, true} : std::tuple{w_hh_t.data(), GH, false};
  }
  std::tuple<const T*, int64_t, bool> proj_b(int64_t H, int64_t P) const {
    return in_place ? std::tuple{w_hr, H, true} : std::tuple{w_hr_t.data(), P, false};
  }
};

// The weights of (layer, d) for the thread owning hidden units [u0, u1) (forward) or
// columns [u0, u1) of the carried dh (backward; the same slice, as P == H when the
// units are split).
template <typename T>
GatedWeights<T> gather_gated_weights(const RnnSizes& s, const std::vector<at::Tensor>& weights,
                                     int64_t layer, int64_t d, bool forward, int64_t u0,
                                     int64_t u1) {
  const int64_t GH = s.G * s.H, H = s.H, P = s.P, U = u1 - u0;
  // Column j of the slice's G*U gate-major columns is row (j / U) * H + u0 + j % U of
  // the weights (and element of the biases).
  auto unit_row = [&](int64_t j) { return (j / U) * H + u0 + j % U; };
  GatedWeights<T> w;
  w.w_ih = weights[s.weight_index(layer, d, 0)].const_data_ptr<T>();
  w.w_hh = weights[s.weight_index(layer, d, 1)].const_data_ptr<T>();
  if (forward) {
    w.b_ih.assign(s.G * U, T(0));
    w.b_hh.assign(s.G * U, T(0));
    if (s.has_biases) {
      const T* bi = weights[s.weight_index(layer, d, 2)].const_data_ptr<T>();
      const T* bh = weights[s.weight_index(layer, d, 3)].const_data_ptr<T>();
      for (const auto j : c10::irange(s.G * U)) {
        w.b_ih[j] = bi[unit_row(j)];
        w.b_hh[j] = bh[unit_row(j)];
      }
    }
  }
  if (s.has_proj) w.w_hr = weights[s.w_hr_index(layer, d)].const_data_ptr<T>();
  w.in_place = weights_in_place(s);
  const bool panels = packed_steps<T>(s);
  if constexpr (std::is_same_v<T, float>) {
    if (panels) {
      if (forward) {
        w.panels.resize(small_gemm_packed_size(P, s.G * U));
        pack_panels_of_rows(P, s.G * U, [&](int64_t j) { return w.w_hh + unit_row(j) * P; },
                            w.panels.data());
        if (blocked_projection<T>(s)) {
          const int64_t I_l = s.layer_input_size(layer);
          w.ih_panels.resize(small_gemm_packed_size(I_l, s.G * U));
          pack_panels_of_rows(I_l, s.G * U,
                              [&](int64_t j) { return w.w_ih + unit_row(j) * I_l; },
                              w.ih_panels.data());
        }
      } else {
        const auto [q0, Q] = h_columns(s, u0, u1);
        w.panels.resize(small_gemm_packed_size(GH, Q));
        pack_small_gemm_b(GH, Q, w.w_hh + q0, P, w.panels.data());
      }
    }
  }
  if (forward && !w.in_place) {
    if (!panels) {
      w.w_hh_t.resize(P * GH);
      transpose_to(w.w_hh, P, GH, P, w.w_hh_t.data());
    }
    if (s.has_proj) {
      w.w_hr_t.resize(H * P);
      transpose_to(w.w_hr, H, P, H, w.w_hr_t.data());
    }
  }
  return w;
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------

// The input projection of the loops that project it themselves (blocked_projection), a
// block of steps at a time: each thread computes its units' G*U columns of X W_ih^T for
// the block's rows into scratch that stays in L2 while the block's steps read it, instead
// of one GEMM over the whole sequence whose output the steps would read back from memory.
// A block holds about this many bytes of the whole layer's G*H columns.
inline constexpr int64_t kProjectionBlockBytes = 128 * 1024;

template <typename T>
int64_t projection_block_steps(const RnnSizes& s) {
  const int64_t step_bytes = s.N * s.G * s.H * int64_t(sizeof(T));
  return std::clamp<int64_t>(kProjectionBlockBytes / step_bytes, 1, s.T);
}

// Per-call scratch of the forward time loops of one direction, sized once: (N, G*H)
// for the step product (a team's threads each own G*U of its columns); with the blocked
// input projection (block steps * N, G*H) for it, the same columns per thread; (N, H) m
// with proj_size.
template <typename T>
struct ForwardScratch {
  std::vector<T> rec, gx, m;
  ForwardScratch(const RnnSizes& s, bool projects_input)
      : rec(s.N * s.G * s.H),
        gx(projects_input ? projection_block_steps<T>(s) * s.N * s.G * s.H : 0),
        m(s.has_proj ? s.N * s.H : 0) {}
};

// One direction of one layer, for the thread owning hidden units [u0, u1) of a team of
// `team` threads (one thread: [0, H)). X: layer `layer`'s input (rows, I_l); Y: its output
// (rows, D*P); gates (rows, D*G*H) holds the input projection, unless the loops project
// it (w.ih_panels), and receives the gates (null: not saved); aux (rows, D*H) receives c
// (LSTM) or hn (GRU). h0/c0/h_n/c_n: this layer-direction's (N, P) / (N, H) blocks.
// Per step the thread computes its G*U columns of h_prev W_hh^T (and of the block's
// x-projection when a block starts), the cell pointwise of its units, and meets the team
// at a barrier before the next step reads h.
template <typename T>
void forward_direction(const RnnSizes& s, int64_t d, const GatedWeights<T>& w, int64_t u0,
                       int64_t u1, int team, int64_t layer, const T* X, T* Y, T* gates, T* aux,
                       const T* h0, const T* c0, T* h_n, T* c_n, ForwardScratch<T>& scratch) {
  const RowKernels<T>& rows = best_rows<T>();
  const int64_t H = s.H, P = s.P, GH = s.G * s.H, U = u1 - u0;
  const int64_t I_l = s.layer_input_size(layer);
  const int64_t ldY = s.D * P, ldG = s.D * GH, ldA = s.D * H;
  T* Yd = Y + d * P;
  T* Gd = gates ? gates + d * GH : nullptr;
  T* Ad = aux + d * H;
  T* rec = scratch.rec.data() + s.G * u0;  // this thread's G*U columns, gate-major
  const bool lstm = s.cell == CellKind::Lstm;
  const bool project = !w.ih_panels.empty();
  const int64_t block = project ? projection_block_steps<T>(s) : 0;
  int64_t block_row = 0;  // the first row of the block in scratch.gx
  const auto [q0, Q] = h_columns(s, u0, u1);  // of h and h_n
  const auto [B, ldb, trans_b] = w.rec_b(GH, P);
  for (int64_t i = 0; i < s.T; ++i) {
    if (project && i % block == 0) {  // steps [i, i + block): times [t_lo, t_hi]
      const int64_t i_end = std::min(s.T, i + block);
      const int64_t t_lo = d == 0 ? i : s.T - i_end, t_hi = d == 0 ? i_end - 1 : s.T - 1 - i;
      block_row = s.offsets[t_lo];
      const int64_t block_rows = s.offsets[t_hi] + s.batch_sizes[t_hi] - block_row;
      step_gemm<T>(block_rows, s.G * U, I_l, X + block_row * I_l, I_l, nullptr, 0, false,
                   scratch.gx.data() + s.G * u0, GH, false, w.ih_panels.data());
    }
    const StepPlan p = s.plan(d, i);
    // Rows b < split continue from the previous step's output rows, the others from h0.
    const T* prev = Yd + p.prev_offset * ldY;
    step_gemm<T>(p.split, s.G * U, P, prev, ldY, B, ldb, trans_b, rec, GH, false,
                 w.rec_panels());
    step_gemm<T>(p.rows - p.split, s.G * U, P, h0 + p.split * P, P, B, ldb, trans_b,
                 rec + p.split * GH, GH, false, w.rec_panels());
    for_rows(p.rows, s.G * U, [&](int64_t b) {
      const int64_t row = p.offset + b;
      // The row's x-projection (gate stride U, as rec's) and where its gates go: the
      // saved gates, or in place.
      T* gx = project ? scratch.gx.data() + (row - block_row) * GH + s.G * u0
                      : Gd + row * ldG;
      T* g_out = Gd ? Gd + row * ldG + u0 : gx;
      const int64_t ldg = Gd ? H : U;
      if (lstm) {
        const T* c_prev = state_before(p, b, Ad, ldA, c0, H);
        T* m = s.has_proj ? scratch.m.data() + b * H : Yd + row * ldY;
        rows.lstm_forward(U, gx, rec + b * GH, U, w.b_ih.data(), w.b_hh.data(), c_prev + u0,
                          g_out, ldg, Ad + row * ldA + u0, m + u0);
      } else {
        const T* h_prev = state_before(p, b, Yd, ldY, h0, P);
        rows.gru_forward(U, gx, rec + b * GH, U, w.b_ih.data(), w.b_hh.data(), h_prev + u0,
                         g_out, ldg, Ad + row * ldA + u0, Yd + row * ldY + u0);
      }
    });
    if (s.has_proj) {  // one thread (no team with proj_size)
      const auto [Bp, ldbp, trans_bp] = w.proj_b(H, P);
      step_gemm<T>(p.rows, P, H, scratch.m.data(), H, Bp, ldbp, trans_bp, Yd + p.offset * ldY,
                   ldY, false);
    }
    for (int64_t b = p.end_begin; b < p.end_end; ++b) {
      const int64_t row = p.offset + b;
      std::memcpy(h_n + b * P + q0, Yd + row * ldY + q0, sizeof(T) * Q);
      if (lstm) std::memcpy(c_n + b * H + u0, Ad + row * ldA + u0, sizeof(T) * U);
    }
    team_barrier(team);
  }
}

}  // namespace

template <typename T>
const RowKernels<T>& best_rows() {
  static constexpr RowKernels<T> vec_rows = make_row_kernels<VecUnits<T>, T>();
  if constexpr (std::is_same_v<T, float>) {
    if (const RowKernels<float>* rows = avx512::cell_rows()) return *rows;
    if (const RowKernels<float>* rows = avx2::cell_rows()) return *rows;
  }
  return vec_rows;
}
template const RowKernels<float>& best_rows<float>();
template const RowKernels<double>& best_rows<double>();

// ---------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------

namespace {

// Per-call scratch of the backward, sized once: per-row buffers for one direction.
template <typename T>
struct BackwardScratch {
  at::Tensor dGW, dGR, h_prev, c_prev, m, dm;
  BackwardScratch(const RnnSizes& s, const at::TensorOptions& options) {
    const int64_t GH = s.G * s.H;
    dGW = at::empty({s.rows, GH}, options);
    dGR = s.cell == CellKind::Gru ? at::empty({s.rows, GH}, options) : dGW;
    h_prev = at::empty({s.rows, s.P}, options);
    if (s.cell == CellKind::Lstm) c_prev = at::empty({s.rows, s.H}, options);
    if (s.has_proj) {
      m = at::empty({s.rows, s.H}, options);
      dm = at::empty({s.N, s.H}, options);
    }
  }
};

// BPTT of one direction of one layer, for the thread owning hidden units [u0, u1) of a
// team of `team` threads (one thread: [0, H)); with a team P == H and the thread also
// owns columns [u0, u1) of dh. dY (rows, D*P) holds the output gradient and becomes dH
// (with the carried gradient); dGW / dGR (rows, G*H) receive the gate gradients; dhx /
// dcx this layer-direction's blocks of grad_hx; ghn / gcn those of grad_h_n (null:
// zero). need_dhx: false when nobody wants grad_hx. Per step: the pointwise of the
// thread's units, a barrier (the product needs every unit's dG), then its columns of
// the carried dh = dG_R W_hh, which only it reads next.
template <typename T>
void backward_direction(const RnnSizes& s, int64_t d, const GatedWeights<T>& w, int64_t u0,
                        int64_t u1, int team, const T* Y, const T* gates, const T* aux,
                        const T* h0, const T* c0, T* dY, const T* ghn, const T* gcn, T* dhx,
                        T* dcx, bool need_dhx, BackwardScratch<T>& sc) {
  const int64_t H = s.H, P = s.P, GH = s.G * s.H, U = u1 - u0;
  const int64_t ldY = s.D * P, ldG = s.D * GH, ldA = s.D * H;
  const auto [q0, Q] = h_columns(s, u0, u1);  // of dh
  const T* Yd = Y + d * P;
  const T* Gd = gates + d * GH;
  const T* Ad = aux + d * H;
  T* dYd = dY + d * P;
  T* dGW = sc.dGW.template mutable_data_ptr<T>();
  T* dGR = sc.dGR.template mutable_data_ptr<T>();
  T* Hp = sc.h_prev.template mutable_data_ptr<T>();
  T* Cp = sc.c_prev.defined() ? sc.c_prev.template mutable_data_ptr<T>() : nullptr;
  T* M = s.has_proj ? sc.m.template mutable_data_ptr<T>() : nullptr;
  T* dM = s.has_proj ? sc.dm.template mutable_data_ptr<T>() : nullptr;
  const bool lstm = s.cell == CellKind::Lstm;
  const RowKernels<T>& rows = best_rows<T>();

  // The states each row started from, for the whole sequence (dW_hh needs h_prev):
  // this thread's columns.
  for (int64_t i = 0; i < s.T; ++i) {
    const StepPlan p = s.plan(d, i);
    for (int64_t b = 0; b < p.rows; ++b) {
      std::memcpy(Hp + (p.offset + b) * P + q0, state_before(p, b, Yd, ldY, h0, P) + q0,
                  sizeof(T) * Q);
      if (lstm)
        std::memcpy(Cp + (p.offset + b) * H + u0, state_before(p, b, Ad, ldA, c0, H) + u0,
                    sizeof(T) * U);
    }
  }

  for (int64_t i = s.T - 1; i >= 0; --i) {
    const StepPlan p = s.plan(d, i);
    auto ends_here = [&](int64_t b) { return b >= p.end_begin && b < p.end_end; };
    // dh = dY + (grad_h_n where the sequence ended here, else the carried gradient)
    for (int64_t b = 0; b < p.rows; ++b) {
      const T* add = ends_here(b) ? (ghn ? ghn + b * P : nullptr) : dhx + b * P;
      if (add) rows.add(Q, add + q0, dYd + (p.offset + b) * ldY + q0);
    }
    const T* dm = dYd + p.offset * ldY;
    int64_t ld_dm = ldY;
    if (s.has_proj) {  // one thread
      step_gemm<T>(p.rows, H, P, dm, ldY, w.w_hr, H, false, dM, H, false);
      dm = dM;
      ld_dm = H;
    }
    for_rows(p.rows, s.G * U, [&](int64_t b) {
      const int64_t row = p.offset + b;
      if (lstm) {
        const T* dc_in = ends_here(b) ? (gcn ? gcn + b * H : nullptr) : dcx + b * H;
        rows.lstm_backward(U, H, Gd + row * ldG + u0, Ad + row * ldA + u0,
                           Cp + row * H + u0, dm + b * ld_dm + u0,
                           dc_in ? dc_in + u0 : nullptr, dGW + row * GH + u0,
                           dcx + b * H + u0, M ? M + row * H + u0 : nullptr);
      } else {
        rows.gru_backward(U, H, Gd + row * ldG + u0, Ad + row * ldA + u0, Hp + row * P + u0,
                          dYd + row * ldY + u0, dGW + row * GH + u0, dGR + row * GH + u0,
                          dhx + b * P + u0);
      }
    });
    team_barrier(team);
    // The first step's product only feeds grad_hx (at T = 1, one of the four GEMMs).
    if (i == 0 && !need_dhx) break;
    // GRU's rows already hold the direct carry dh z: accumulate onto it.
    step_gemm<T>(p.rows, Q, GH, dGR + p.offset * GH, GH, w.w_hh + q0, P, false, dhx + q0, P,
                 s.cell == CellKind::Gru, w.rec_panels());
  }
}

template <typename T>
class GatedLoops final : public CellLoops<T> {
 public:
  GatedLoops(const RnnSizes& s, const std::vector<at::Tensor>& weights)
      : s_(s), weights_(weights) {}

  bool projects_input() const override { return blocked_projection<T>(s_); }

  void forward(const LayerBuffers<T>& b) override {
    // One scratch per direction: a bidirectional layer runs its directions on a thread each.
    while (static_cast<int64_t>(fwd_.size()) < s_.D) fwd_.emplace_back(s_, projects_input());
    const int64_t NP = s_.N * s_.P, NH = s_.N * s_.H;
    const bool lstm = s_.cell == CellKind::Lstm;
    run_directions(s_, [&](int64_t d, int64_t u0, int64_t u1, int team) {
      const GatedWeights<T> w = gather_gated_weights<T>(s_, weights_, b.layer, d, true, u0, u1);
      forward_direction<T>(s_, d, w, u0, u1, team, b.layer, b.X, b.Y, b.gates, b.aux,
                           b.hx[0] + d * NP,
                           lstm ? b.hx[1] + d * NH : nullptr, b.h_n[0] + d * NP,
                           lstm ? b.h_n[1] + d * NH : nullptr, fwd_[d]);
    }, split_units());
  }

  void backward(const LayerBuffers<T>& b,
                c10::function_ref<void(int64_t, const GateGrads<T>&)> tail) override {
    while (static_cast<int64_t>(bwd_.size()) < s_.D) bwd_.emplace_back(s_, weights_[0].options());
    const int64_t NP = s_.N * s_.P, NH = s_.N * s_.H, GH = s_.G * s_.H;
    const bool lstm = s_.cell == CellKind::Lstm;
    auto block = [](const T* p, int64_t offset) { return p ? p + offset : nullptr; };
    run_directions(s_, [&](int64_t d, int64_t u0, int64_t u1, int team) {
      const GatedWeights<T> w =
          gather_gated_weights<T>(s_, weights_, b.layer, d, false, u0, u1);
      backward_direction<T>(s_, d, w, u0, u1, team, b.Y, b.gates, b.aux, b.hx[0] + d * NP,
                            lstm ? b.hx[1] + d * NH : nullptr, b.dY,
                            block(b.grad_h_n[0], d * NP),
                            lstm ? block(b.grad_h_n[1], d * NH) : nullptr,
                            b.grad_hx[0] + d * NP, lstm ? b.grad_hx[1] + d * NH : nullptr,
                            b.need_grad_hx, bwd_[d]);
    }, split_units());
    // The weight-gradient GEMMs after both directions, on all threads.
    for (const auto d : c10::irange(s_.D)) {
      const BackwardScratch<T>& sc = bwd_[d];
      GateGrads<T> g;
      g.dGW = sc.dGW.template const_data_ptr<T>();
      g.ldW = GH;
      g.dGR = sc.dGR.template const_data_ptr<T>();
      g.ldR = GH;
      g.h_prev = sc.h_prev.template const_data_ptr<T>();
      if (s_.has_proj) {
        g.m = sc.m.template const_data_ptr<T>();
        g.dH = b.dY + d * s_.P;
        g.ldH = s_.D * s_.P;
      }
      tail(d, g);
    }
  }

 private:
  // A team splits a step's hidden units only with the packed per-thread weights, and
  // not across a projection (its product needs every unit's m).
  bool split_units() const { return packed_steps<T>(s_) && !s_.has_proj; }

  const RnnSizes& s_;
  const std::vector<at::Tensor>& weights_;
  std::vector<ForwardScratch<T>> fwd_;   // per direction
  std::vector<BackwardScratch<T>> bwd_;
};

}  // namespace

template <typename T>
std::unique_ptr<CellLoops<T>> make_gated_loops(const RnnSizes& s,
                                               const std::vector<at::Tensor>& weights) {
  return std::make_unique<GatedLoops<T>>(s, weights);
}
template std::unique_ptr<CellLoops<float>> make_gated_loops<float>(
    const RnnSizes&, const std::vector<at::Tensor>&);
template std::unique_ptr<CellLoops<double>> make_gated_loops<double>(
    const RnnSizes&, const std::vector<at::Tensor>&);

}  // namespace rnnfast::cpu
