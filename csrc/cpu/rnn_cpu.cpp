// CPU kernels of the rnnfast ops.
//
// Layout: every sequence is handled as a time-major 2-D matrix of `rows` rows;
// step t owns rows [offsets[t], offsets[t] + batch_sizes[t]). Dense input is the
// special case batch_sizes[t] == N, so packed and dense sequences share one path.
// A layer's output Y is (rows, D*H); direction d owns columns [d*H, (d+1)*H).
//
// Forward, per layer and direction:
//   Y_d  = X @ W_ih^T                        one GEMM over all rows
//   per step t:  Y_d[t] += h_prev @ W_hh^T   one GEMM (in place)
//                Y_d[t]  = act(Y_d[t] + b_ih + b_hh)   one fused pass
// Backward (BPTT), per layer (top down) and direction, dZ starts as dY plus the
// grad_h_n rows at the step where each sequence's state became h_n:
//   per step:  dZ[t] *= act'(Y[t])                     one fused pass
//              dZ[t-1] += dZ[t] @ W_hh  (or grad_hx)   one GEMM
//   then dW_ih = dZ^T X, dW_hh = dZ^T H_prev, db = sum_rows dZ, dX = dZ W_ih:
//   each one GEMM / reduction over all rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <cstring>

#include "../kernels/activations.h"
#include "../rnn_args.h"
#include "cpu_common.h"
#include "gated_cpu.h"
#include "parallel_tiles.h"
#include "row_kernels.h"
#include "step_avx512.h"

#include <omp.h>

namespace rnnfast::cpu {
namespace {

using at::vec::Vectorized;



// h[r, :] = act(z[r, :] + bias) for r < nrows. z and h may alias (in place).
template <typename T>
void bias_act_rows(Activation act, int64_t nrows, int64_t H, const T* bias, const T* z,
                   int64_t ldz, T* h, int64_t ldh) {
  using Vec = Vectorized<T>;
  const int64_t grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(H, 1));
  if constexpr (std::is_same_v<T, float>) {
    // tanh through the SIMD rows of the gated cells (SLEEF's vector tanh: this file's
    // at::vec is the generic build, whose tanh is scalar).
    if (act == Activation::Tanh) {
      const auto tanh_bias = best_rows<float>().tanh_bias;
      at::parallel_for(0, nrows, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) tanh_bias(H, z + r * ldz, bias, h + r * ldh);
      });
      return;
    }
  }
  at::parallel_for(0, nrows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* zr = z + r * ldz;
      T* hr = h + r * ldh;
      int64_t j = 0;
      for (; j + Vec::size() <= H; j += Vec::size()) {
        Vec v = Vec::loadu(zr + j) + Vec::loadu(bias + j);
        v = act == Activation::Tanh ? v.tanh() : at::vec::maximum(v, Vec(T(0)));
        v.store(hr + j);
      }
      for (; j < H; ++j) hr[j] = activate<T>(act, zr[j] + bias[j]);
    }
  });
}

// dz[r, :] = dz[r, :] * act'(h[r, :]) for r < nrows (a select for relu, as in torch).
template <typename T>
void mul_act_grad_rows(Activation act, int64_t nrows, int64_t H, T* dz, int64_t ldz, const T* h,
                       int64_t ldh) {
  using Vec = Vectorized<T>;
  const int64_t grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(H, 1));
  at::parallel_for(0, nrows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T* dzr = dz + r * ldz;
      const T* hr = h + r * ldh;
      int64_t j = 0;
      for (; j + Vec::size() <= H; j += Vec::size()) {
        Vec hv = Vec::loadu(hr + j);
        Vec dv = Vec::loadu(dzr + j);
        Vec out = act == Activation::Tanh ? dv * (Vec(T(1)) - hv * hv)
                                          : Vec::blendv(dv, Vec(T(0)), hv <= Vec(T(0)));
        out.store(dzr + j);
      }
      for (; j < H; ++j) dzr[j] = apply_activation_grad<T>(act, dzr[j], hr[j]);
    }
  });
}

// Per layer/direction weight pointers (contiguous copies held by the caller).
template <typename T>
struct LayerWeights {
  const T* w_ih = nullptr;
  const T* w_hh = nullptr;
  std::vector<T> bias;  // b_ih + b_hh (zeros without biases)
};

template <typename T>
std::vector<LayerWeights<T>> gather_weights(const RnnSizes& s,
                                            const std::vector<at::Tensor>& weights) {
  std::vector<LayerWeights<T>> out(s.NL * s.D);
  for (const auto i : c10::irange(s.NL * s.D)) {
    const int64_t base = i * s.weights_per_layer();
    out[i].w_ih = weights[base].const_data_ptr<T>();
    out[i].w_hh = weights[base + 1].const_data_ptr<T>();
    out[i].bias.assign(s.H, T(0));
    if (s.has_biases) {
      const T* b_ih = weights[base + 2].const_data_ptr<T>();
      const T* b_hh = weights[base + 3].const_data_ptr<T>();
      for (const auto j : c10::irange(s.H)) out[i].bias[j] = b_ih[j] + b_hh[j];
    }
  }
  return out;
}


// ---------------------------------------------------------------------------
// float32 + AVX-512: fused step kernel, one OpenMP team per layer
// ---------------------------------------------------------------------------

// A step smaller than this many multiply-adds runs on one thread: a barrier per
// step would cost more than it saves.
constexpr int64_t kTeamMinFlops = 48 * 1024;

bool use_fast_path() { return avx512::supported(); }

// How to spread one layer's time loop over threads. Directions of a bidirectional
// layer are independent: one thread each, no synchronisation. A unidirectional
// layer splits the step's columns (rows of W_hh) over threads, with one barrier per
// step, only when a step is large enough to pay for it.
struct TeamPlan {
  int threads = 1;
  bool per_direction = false;
};

TeamPlan plan_team(const RnnSizes& s) {
  TeamPlan p;
  const int nt = at::in_parallel_region() ? 1 : at::get_num_threads();
  if (nt < 2) return p;
  if (s.D == 2) {
    p.threads = 2;
    p.per_direction = true;
  } else if (s.N * s.H * s.H >= kTeamMinFlops && s.H >= 32) {
    p.threads = static_cast<int>(std::min<int64_t>(nt, s.H / 16));
  }
  return p;
}

// Column slice [begin, end) of H owned by thread `tid` of `n`; 16-aligned.
std::pair<int64_t, int64_t> column_slice(int64_t H, int tid, int n) {
  const int64_t units = (H + 15) / 16;
  const int64_t b = units * tid / n, e = units * (tid + 1) / n;
  return {std::min(H, b * 16), std::min(H, e * 16)};
}

template <typename Body>
void run_team(const TeamPlan& p, Body body) {
  if (p.threads <= 1) {
    body(0, 1);
    return;
  }
#pragma omp parallel num_threads(p.threads)
  body(omp_get_thread_num(), omp_get_num_threads());
}

inline void team_barrier(int n) {
  if (n > 1) {
#pragma omp barrier
  }
}

// Runs body(d, c0, c1, team) for each direction of a layer on the team plan_team
// picks: one thread per direction (team = 1), or the step's columns [c0, c1) split
// over `team` threads that meet at a barrier every step.
template <typename Body>
void run_directions(const RnnSizes& s, Body body) {
  const TeamPlan plan = plan_team(s);
  run_team(plan, [&](int tid, int n) {
    for (int64_t d = 0; d < s.D; ++d) {
      if (plan.per_direction && d != tid) continue;
      const auto [c0, c1] = plan.per_direction ? std::pair<int64_t, int64_t>{0, s.H}
                                               : column_slice(s.H, tid, n);
      body(d, c0, c1, plan.per_direction ? 1 : n);
    }
  });
}

// Forward time loop of one direction on columns [c0, c1) of H. P (float32) holds the
// input projection X @ W_ih^T; the states go to Y (type In), from which the next step
// reads its A operand. In = float: P and Y are the same matrix (updated in place) and
// WT is W_hh^T (H x H). In = BFloat16: WT is W_hh^T packed by avx512::pack_pairs.
template <typename In>
void forward_direction_avx512(const RnnSizes& s, int64_t d, const In* WT, int64_t ldw,
                              const float* bias, const In* hx_d, float* P, In* Y, In* hn_d,
                              int64_t c0, int64_t c1, int team) {
  const int64_t H = s.H, DH = s.D * s.H, T_ = s.T;
  const auto& bs = s.batch_sizes;
  const auto& off = s.offsets;
  float* Pd = P + d * H;
  In* Yd = Y + d * H;
  avx512::StepArgsT<In> a;
  a.N = H;
  a.K = H;
  a.B = WT;
  a.ldb = ldw;
  a.ldc = DH;
  a.ldo = DH;
  a.bias = bias;
  a.act = s.act;
  a.epilogue = avx512::Epilogue::Activate;
  auto at_rows = [&](int64_t row) {  // the step's output rows start at `row`
    a.C = Pd + row * DH;
    a.O = Yd + row * DH;
  };
  auto copy_cols = [&](int64_t nrows, const In* src, int64_t lds, In* dst, int64_t ldd) {
    for (int64_t r = 0; r < nrows; ++r)
      std::memcpy(dst + r * ldd + c0, src + r * lds + c0, sizeof(In) * (c1 - c0));
  };
  if (d == 0) {
    for (int64_t t = 0; t < T_; ++t) {
      a.M = bs[t];
      a.A = t == 0 ? hx_d : Yd + off[t - 1] * DH;
      a.lda = t == 0 ? H : DH;
      at_rows(off[t]);
      avx512::step(a, c0, c1);
      const int64_t live_next = t + 1 < T_ ? bs[t + 1] : 0;
      copy_cols(bs[t] - live_next, a.O + live_next * DH, DH, hn_d + live_next * H, H);
      team_barrier(team);
    }
  } else {
    for (int64_t t = T_ - 1; t >= 0; --t) {
      const int64_t live_next = t + 1 < T_ ? bs[t + 1] : 0;
      a.M = live_next;
      a.A = Yd + (t + 1 < T_ ? off[t + 1] : 0) * DH;
      a.lda = DH;
      at_rows(off[t]);
      avx512::step(a, c0, c1);
      a.M = bs[t] - live_next;
      a.A = hx_d + live_next * H;
      a.lda = H;
      at_rows(off[t] + live_next);
      avx512::step(a, c0, c1);
      team_barrier(team);
    }
    copy_cols(s.N, Yd + off[0] * DH, DH, hn_d, H);
  }
}

// Backward time loop of one direction on columns [c0, c1). dZ (float32) holds dY (plus
// the h_n gradient, already added) and becomes dZ; Y (type In) holds the states.
// In = float: W is W_hh (H x H) row-major, and each step reads dZ itself.
// In = BFloat16: W is W_hh packed by avx512::pack_pairs, and every step also writes its
// rows of dZ rounded to bf16 into dZo, from which the next step reads.
// dhx_d (float32) receives dZ[first step] @ W_hh.
template <typename In>
void backward_direction_avx512(const RnnSizes& s, int64_t d, const In* W, int64_t ldw,
                               const In* Y, float* dZ, In* dZo, float* dhx_d, int64_t c0,
                               int64_t c1, int team) {
  const int64_t H = s.H, DH = s.D * s.H, T_ = s.T;
  const auto& bs = s.batch_sizes;
  const auto& off = s.offsets;
  const In* Yd = Y + d * H;
  float* dZd = dZ + d * H;
  const In* src;  // dZ as the A operand
  if constexpr (std::is_same_v<In, float>) src = dZd;
  else src = dZo + d * H;
  In* dZod = dZo ? dZo + d * H : nullptr;
  avx512::StepArgsT<In> g;  // dZ[t] = (dZ[t] + dZ[src] @ W_hh) * act'(Y[t])
  g.N = H;
  g.B = W;
  g.ldb = ldw;
  g.lda = DH;
  g.ldc = DH;
  g.ldo = DH;
  g.ldy = DH;
  g.act = s.act;
  g.epilogue = avx512::Epilogue::ActGrad;
  auto at_rows = [&](int64_t row) {
    g.C = dZd + row * DH;
    g.O = dZod ? dZod + row * DH : nullptr;
    g.Y = Yd + row * DH;
  };
  avx512::StepArgsT<In> st;  // dhx rows = dZ[src] @ W_hh
  st.N = H;
  st.K = H;
  st.B = W;
  st.ldb = ldw;
  st.lda = DH;
  st.ldc = H;
  st.epilogue = avx512::Epilogue::Store;
  if (d == 0) {
    for (int64_t t = T_ - 1; t >= 0; --t) {
      const int64_t live_next = t + 1 < T_ ? bs[t + 1] : 0;
      at_rows(off[t]);
      g.M = live_next;
      g.K = H;
      g.A = src + (t + 1 < T_ ? off[t + 1] : 0) * DH;
      avx512::step(g, c0, c1);
      at_rows(off[t] + live_next);  // sequences ending at t: no recurrent gradient
      g.M = bs[t] - live_next;
      g.K = 0;
      avx512::step(g, c0, c1);
      team_barrier(team);
    }
    st.M = bs[0];
    st.A = src + off[0] * DH;
    st.C = dhx_d;
    avx512::step(st, c0, c1);
  } else {
    for (int64_t t = 0; t < T_; ++t) {
      at_rows(off[t]);
      g.M = bs[t];
      g.K = t == 0 ? 0 : H;
      g.A = src + (t == 0 ? 0 : off[t - 1]) * DH;
      avx512::step(g, c0, c1);
      if (t > 0) {  // rows of step t-1 that started from hx
        st.M = bs[t - 1] - bs[t];
        st.A = src + (off[t - 1] + bs[t]) * DH;
        st.C = dhx_d + bs[t] * H;
        avx512::step(st, c0, c1);
      }
      team_barrier(team);
    }
    st.M = bs[T_ - 1];
    st.A = src + off[T_ - 1] * DH;
    st.C = dhx_d;
    avx512::step(st, c0, c1);
  }
}

void forward_layer_fast(const RnnSizes& s, int64_t layer, const float* X, int64_t I_l,
                        const std::vector<LayerWeights<float>>& lw, const float* hx, float* Y,
                        float* h_n) {
  const int64_t H = s.H, DH = s.D * s.H;
  std::vector<float> WT(s.D * H * H);
  for (const auto d : c10::irange(s.D)) {
    const LayerWeights<float>& w = lw[layer * s.D + d];
    gemm_any<float>(false, true, s.rows, H, I_l, X, I_l, w.w_ih, I_l, 0.f, Y + d * H, DH);
    transpose_to(w.w_hh, H, H, H, WT.data() + d * H * H);
  }
  run_directions(s, [&](int64_t d, int64_t c0, int64_t c1, int team) {
    const int64_t ld = layer * s.D + d;
    forward_direction_avx512<float>(s, d, WT.data() + d * H * H, H, lw[ld].bias.data(),
                                    hx + ld * s.N * H, Y, Y, h_n + ld * s.N * H, c0, c1, team);
  });
}

template <typename T>
void forward_layer(const RnnSizes& s, int64_t layer, const T* X, int64_t I_l,
                   const std::vector<LayerWeights<T>>& lw, const T* hx, T* Y, T* h_n) {
  const int64_t H = s.H, DH = s.D * s.H, T_ = s.T;
  const auto& bs = s.batch_sizes;
  const auto& off = s.offsets;
  for (const auto d : c10::irange(s.D)) {
    const LayerWeights<T>& w = lw[layer * s.D + d];
    const T* hx_d = hx + (layer * s.D + d) * s.N * H;
    T* hn_d = h_n + (layer * s.D + d) * s.N * H;
    T* Yd = Y + d * H;
    gemm_any<T>(false, true, s.rows, H, I_l, X, I_l, w.w_ih, I_l, T(0), Yd, DH);
    if (d == 0) {
      for (int64_t t = 0; t < T_; ++t) {
        T* Yt = Yd + off[t] * DH;
        const T* h_prev = t == 0 ? hx_d : Yd + off[t - 1] * DH;
        const int64_t ld_prev = t == 0 ? H : DH;
        gemm_any<T>(false, true, bs[t], H, H, h_prev, ld_prev, w.w_hh, H, T(1), Yt, DH);
        bias_act_rows<T>(s.act, bs[t], H, w.bias.data(), Yt, DH, Yt, DH);
        // Rows whose sequence ends at this step hold their final state.
        const int64_t live_next = t + 1 < T_ ? bs[t + 1] : 0;
        copy_rows<T>(bs[t] - live_next, H, Yt + live_next * DH, DH, hn_d + live_next * H, H,
                     false);
      }
    } else {
      for (int64_t t = T_ - 1; t >= 0; --t) {
        T* Yt = Yd + off[t] * DH;
        // Rows alive at t+1 continue from there; rows that start at t start from hx.
        const int64_t live_next = t + 1 < T_ ? bs[t + 1] : 0;
        if (live_next > 0)
          gemm_any<T>(false, true, live_next, H, H, Yd + off[t + 1] * DH, DH, w.w_hh, H, T(1),
                  Yt, DH);
        gemm_any<T>(false, true, bs[t] - live_next, H, H, hx_d + live_next * H, H, w.w_hh, H,
                T(1), Yt + live_next * DH, DH);
        bias_act_rows<T>(s.act, bs[t], H, w.bias.data(), Yt, DH, Yt, DH);
      }
      copy_rows<T>(s.N, H, Yd + off[0] * DH, DH, hn_d, H, false);
    }
  }
}

template <typename T>
void forward_impl(const RnnSizes& s, const at::Tensor& x2d, const at::Tensor& hx,
                  const std::vector<at::Tensor>& weights, const std::optional<at::Tensor>& masks,
                  const at::Tensor& out2d, const at::Tensor& h_n, const at::Tensor& workspace) {
  const auto lw = gather_weights<T>(s, weights);
  for (const auto layer : c10::irange(s.NL)) {
    at::Tensor X = layer_input(layer, x2d, workspace, masks).contiguous();
    at::Tensor Y = layer + 1 == s.NL ? out2d : workspace[layer];
    if constexpr (std::is_same_v<T, float>) {
      if (use_fast_path()) {
        forward_layer_fast(s, layer, X.const_data_ptr<float>(), s.layer_input_size(layer), lw,
                           hx.const_data_ptr<float>(), Y.mutable_data_ptr<float>(),
                           h_n.mutable_data_ptr<float>());
        continue;
      }
    }
    forward_layer<T>(s, layer, X.const_data_ptr<T>(), s.layer_input_size(layer), lw,
                     hx.const_data_ptr<T>(), Y.mutable_data_ptr<T>(), h_n.mutable_data_ptr<T>());
  }
}

// BLAS time loop of one direction (any dtype): see the file comment. dZ holds dY
// plus the h_n gradient (add_grad_h_n) and becomes dZ.
template <typename T>
void backward_direction(const RnnSizes& s, int64_t d, const T* W, const T* Y, T* dZ,
                        T* dhx_d) {
  const int64_t H = s.H, DH = s.D * s.H, T_ = s.T;
  const auto& bs = s.batch_sizes;
  const auto& off = s.offsets;
  const T* Yd = Y + d * H;
  T* dZd = dZ + d * H;
  if (d == 0) {
    for (int64_t t = T_ - 1; t >= 0; --t) {
      T* dZt = dZd + off[t] * DH;
      mul_act_grad_rows<T>(s.act, bs[t], H, dZt, DH, Yd + off[t] * DH, DH);
      if (t > 0) {
        gemm_any<T>(false, false, bs[t], H, H, dZt, DH, W, H, T(1), dZd + off[t - 1] * DH, DH);
      } else {
        gemm_any<T>(false, false, bs[0], H, H, dZt, DH, W, H, T(0), dhx_d, H);
      }
    }
  } else {
    for (int64_t t = 0; t < T_; ++t) {
      T* dZt = dZd + off[t] * DH;
      const int64_t live_next = t + 1 < T_ ? bs[t + 1] : 0;
      mul_act_grad_rows<T>(s.act, bs[t], H, dZt, DH, Yd + off[t] * DH, DH);
      if (live_next > 0)
        gemm_any<T>(false, false, live_next, H, H, dZt, DH, W, H, T(1), dZd + off[t + 1] * DH,
                DH);
      gemm_any<T>(false, false, bs[t] - live_next, H, H, dZt + live_next * DH, DH, W, H, T(0),
              dhx_d + live_next * H, H);
    }
  }
}

// Both time loops expect the h_n gradient already in dZ: add it to the rows of the
// step where each sequence's state becomes h_n (its last step forward, t = 0 reverse).
template <typename T>
void add_grad_h_n(const RnnSizes& s, int64_t d, const T* dhn_d, T* dZ) {
  const int64_t H = s.H, DH = s.D * s.H, T_ = s.T;
  T* dZd = dZ + d * H;
  if (d == 1) {
    copy_rows<T>(s.batch_sizes[0], H, dhn_d, H, dZd + s.offsets[0] * DH, DH, true);
    return;
  }
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t live_next = t + 1 < T_ ? s.batch_sizes[t + 1] : 0;
    copy_rows<T>(s.batch_sizes[t] - live_next, H, dhn_d + live_next * H, H,
                 dZd + (s.offsets[t] + live_next) * DH, DH, true);
  }
}

// H_prev (rows x H) = the hidden state each step of direction d started from (same
// rows as dZ[t]): hx or the previous step's output in Y (rows x D*H).
template <typename T>
void gather_h_prev(const RnnSizes& s, int64_t d, const T* hx_d, const T* Y, T* H_prev) {
  const int64_t H = s.H, DH = s.D * s.H, T_ = s.T;
  const auto& bs = s.batch_sizes;
  const auto& off = s.offsets;
  const T* Yd = Y + d * H;
  for (int64_t t = 0; t < T_; ++t) {
    T* dst = H_prev + off[t] * H;
    if (d == 0) {
      if (t == 0) copy_rows<T>(bs[0], H, hx_d, H, dst, H, false);
      else copy_rows<T>(bs[t], H, Yd + off[t - 1] * DH, DH, dst, H, false);
    } else {
      const int64_t live_next = t + 1 < T_ ? bs[t + 1] : 0;
      if (live_next > 0) copy_rows<T>(live_next, H, Yd + off[t + 1] * DH, DH, dst, H, false);
      copy_rows<T>(bs[t] - live_next, H, hx_d + live_next * H, H, dst + live_next * H, H, false);
    }
  }
}

template <typename T>
void backward_layer(const RnnSizes& s, int64_t layer, const T* X, int64_t I_l,
                    const std::vector<LayerWeights<T>>& lw, const T* hx, const T* Y, T* dZ,
                    const T* grad_h_n, T* dX, T* grad_hx, T* H_prev,
                    const std::vector<at::Tensor>& grad_weights) {
  const int64_t H = s.H, DH = s.D * s.H;

  if (grad_h_n)
    for (const auto d : c10::irange(s.D))
      add_grad_h_n<T>(s, d, grad_h_n + (layer * s.D + d) * s.N * H, dZ);

  bool fast = false;
  if constexpr (std::is_same_v<T, float>) {
    fast = use_fast_path();
    if (fast) {
      run_directions(s, [&](int64_t d, int64_t c0, int64_t c1, int team) {
        const int64_t ld = layer * s.D + d;
        backward_direction_avx512<float>(s, d, lw[ld].w_hh, H, Y, dZ, nullptr,
                                         grad_hx + ld * s.N * H, c0, c1, team);
      });
    }
  }
  if (!fast) {
    for (const auto d : c10::irange(s.D)) {
      const int64_t ld = layer * s.D + d;
      backward_direction<T>(s, d, lw[ld].w_hh, Y, dZ, grad_hx + ld * s.N * H);
    }
  }

  for (const auto d : c10::irange(s.D)) {
    const int64_t ld = layer * s.D + d;
    const LayerWeights<T>& w = lw[ld];
    T* dZd = dZ + d * H;
    gather_h_prev<T>(s, d, hx + ld * s.N * H, Y, H_prev);

    const int64_t base = ld * s.weights_per_layer();
    gemm_any<T>(true, false, H, I_l, s.rows, dZd, DH, X, I_l, T(0),
            grad_weights[base].mutable_data_ptr<T>(), I_l);
    gemm_any<T>(true, false, H, H, s.rows, dZd, DH, H_prev, H, T(0),
            grad_weights[base + 1].mutable_data_ptr<T>(), H);
    if (s.has_biases) {
      at::Tensor db = grad_weights[base + 2];
      at::sum_out(db, view_2d(dZd, s.rows, H, DH), {0});
      grad_weights[base + 3].copy_(db);
    }
    gemm_any<T>(false, false, s.rows, I_l, H, dZd, DH, w.w_ih, I_l, d == 0 ? T(0) : T(1), dX,
            I_l);
  }
}

template <typename T>
void backward_impl(const RnnSizes& s, const at::Tensor& x2d, const at::Tensor& hx,
                   const std::vector<at::Tensor>& weights, const std::optional<at::Tensor>& masks,
                   const at::Tensor& out2d, const at::Tensor& workspace, at::Tensor dZ,
                   const at::Tensor& grad_h_n, const at::Tensor& grad_x2d,
                   const at::Tensor& grad_hx, const std::vector<at::Tensor>& grad_weights) {
  const auto lw = gather_weights<T>(s, weights);
  at::Tensor H_prev = at::empty({s.rows, s.H}, x2d.options());
  for (int64_t layer = s.NL - 1; layer >= 0; --layer) {
    at::Tensor X = layer_input(layer, x2d, workspace, masks).contiguous();
    at::Tensor Y = layer + 1 == s.NL ? out2d : workspace[layer];
    const int64_t I_l = s.layer_input_size(layer);
    at::Tensor dX = layer == 0 ? grad_x2d : at::empty({s.rows, I_l}, x2d.options());
    backward_layer<T>(s, layer, X.const_data_ptr<T>(), I_l, lw, hx.const_data_ptr<T>(),
                      Y.const_data_ptr<T>(), dZ.mutable_data_ptr<T>(),
                      grad_h_n.defined() ? grad_h_n.const_data_ptr<T>() : nullptr,
                      dX.mutable_data_ptr<T>(), grad_hx.mutable_data_ptr<T>(),
                      H_prev.mutable_data_ptr<T>(), grad_weights);
    if (layer > 0) {
      // The layer below's output gradient; dropout's backward is the same mask.
      if (masks.has_value() && masks->defined()) dX.mul_((*masks)[layer - 1]);
      dZ = dX;
    }
  }
}

// ---------------------------------------------------------------------------
// bfloat16 on AVX512-BF16: bf16 operands, float32 accumulation
// ---------------------------------------------------------------------------
// Every product multiplies bf16 operands and accumulates in float32 (vdpbf16ps). The
// input projection, the pre-activation and the gradients dZ stay float32; each
// state h_t is rounded to bf16 once (it is the op's output) and the next step
// multiplies that rounded state, as bf16 nn.RNN does (which in addition rounds the
// projection, each sum and tanh's argument to bf16). The recurrent GEMMs use the
// step kernel, every other GEMM the same kernel tiled; results do not depend on the
// thread count except for the bias gradient (at::sum), as in float32.

using at::BFloat16;

bool use_bf16_path(const at::Tensor& input) {
  return input.scalar_type() == at::kBFloat16 && avx512::bf16_supported();
}

// The K x N matrix with element (k, n) at src[k * k_stride + n * n_stride], packed in
// k-pairs for the bf16 kernels (row stride 2N).
at::Tensor pack_pairs(int64_t K, int64_t N, const BFloat16* src, int64_t k_stride,
                      int64_t n_stride, const at::TensorOptions& options) {
  at::Tensor P = at::empty({(K + 1) / 2, 2 * N}, options);
  avx512::pack_pairs(K, N, src, k_stride, n_stride, P.mutable_data_ptr<BFloat16>());
  return P;
}

// b_ih + b_hh in float32 per layer/direction (zeros without biases).
std::vector<std::vector<float>> float_biases(const RnnSizes& s,
                                             const std::vector<at::Tensor>& weights) {
  std::vector<std::vector<float>> out(s.NL * s.D, std::vector<float>(s.H, 0.f));
  if (!s.has_biases) return out;
  for (const auto i : c10::irange(s.NL * s.D)) {
    const BFloat16* b_ih = weights[i * 4 + 2].const_data_ptr<BFloat16>();
    const BFloat16* b_hh = weights[i * 4 + 3].const_data_ptr<BFloat16>();
    for (const auto j : c10::irange(s.H)) out[i][j] = float(b_ih[j]) + float(b_hh[j]);
  }
  return out;
}

void forward_bf16(const RnnSizes& s, const at::Tensor& x2d, const at::Tensor& hx,
                  const std::vector<at::Tensor>& weights, const std::optional<at::Tensor>& masks,
                  const at::Tensor& out2d, const at::Tensor& h_n, const at::Tensor& workspace) {
  const int64_t H = s.H, DH = s.D * s.H;
  const auto biases = float_biases(s, weights);
  at::Tensor P = at::empty({s.rows, DH}, x2d.options().dtype(at::kFloat));
  for (const auto layer : c10::irange(s.NL)) {
    const at::Tensor X = layer_input(layer, x2d, workspace, masks).contiguous();
    const at::Tensor Y = layer + 1 == s.NL ? out2d : workspace[layer];
    const int64_t I_l = s.layer_input_size(layer);
    std::vector<at::Tensor> WT(s.D);  // B(k, n) = W_hh[n][k]
    for (const auto d : c10::irange(s.D)) {
      const int64_t base = (layer * s.D + d) * s.weights_per_layer();
      const at::Tensor Wih = pack_pairs(I_l, H, weights[base].const_data_ptr<BFloat16>(), 1,
                                        I_l, x2d.options());
      avx512::gemm(s.rows, H, I_l, X.const_data_ptr<BFloat16>(), I_l,
                   Wih.const_data_ptr<BFloat16>(), 2 * H, P.mutable_data_ptr<float>() + d * H,
                   DH, false);
      WT[d] = pack_pairs(H, H, weights[base + 1].const_data_ptr<BFloat16>(), 1, H, x2d.options());
    }
    run_directions(s, [&](int64_t d, int64_t c0, int64_t c1, int team) {
      const int64_t ld = layer * s.D + d;
      forward_direction_avx512<BFloat16>(
          s, d, WT[d].const_data_ptr<BFloat16>(), 2 * H, biases[ld].data(),
          hx.const_data_ptr<BFloat16>() + ld * s.N * H, P.mutable_data_ptr<float>(),
          Y.mutable_data_ptr<BFloat16>(), h_n.mutable_data_ptr<BFloat16>() + ld * s.N * H,
          c0, c1, team);
    });
  }
}

// dZ: float32 (rows, D*H), the output gradient; ghn: float32 h_n gradient or undefined.
void backward_bf16(const RnnSizes& s, const at::Tensor& x2d, const at::Tensor& hx,
                   const std::vector<at::Tensor>& weights, const std::optional<at::Tensor>& masks,
                   const at::Tensor& out2d, const at::Tensor& workspace, at::Tensor dZ,
                   const at::Tensor& ghn, const at::Tensor& grad_x2d, const at::Tensor& grad_hx,
                   const std::vector<at::Tensor>& grad_weights) {
  const int64_t H = s.H, DH = s.D * s.H;
  const auto bf16 = x2d.options();
  const auto f32 = bf16.dtype(at::kFloat);
  at::Tensor dZo = at::empty({s.rows, DH}, bf16);  // dZ rounded: the GEMMs' operand
  at::Tensor dZt = at::empty({H, s.rows}, bf16);   // one direction's dZo, transposed
  at::Tensor H_prev = at::empty({s.rows, H}, bf16);
  at::Tensor dhx = at::empty({s.NL * s.D, s.N, H}, f32);
  for (int64_t layer = s.NL - 1; layer >= 0; --layer) {
    const at::Tensor X = layer_input(layer, x2d, workspace, masks).contiguous();
    const at::Tensor Y = layer + 1 == s.NL ? out2d : workspace[layer];
    const int64_t I_l = s.layer_input_size(layer);
    float* dZp = dZ.mutable_data_ptr<float>();
    std::vector<at::Tensor> W(s.D);  // B(k, n) = W_hh[k][n]
    for (const auto d : c10::irange(s.D)) {
      const int64_t ld = layer * s.D + d;
      if (ghn.defined()) add_grad_h_n<float>(s, d, ghn.const_data_ptr<float>() + ld * s.N * H, dZp);
      W[d] = pack_pairs(H, H, weights[ld * s.weights_per_layer() + 1].const_data_ptr<BFloat16>(),
                        H, 1, bf16);
    }
    run_directions(s, [&](int64_t d, int64_t c0, int64_t c1, int team) {
      const int64_t ld = layer * s.D + d;
      backward_direction_avx512<BFloat16>(
          s, d, W[d].const_data_ptr<BFloat16>(), 2 * H, Y.const_data_ptr<BFloat16>(), dZp,
          dZo.mutable_data_ptr<BFloat16>(), dhx.mutable_data_ptr<float>() + ld * s.N * H, c0,
          c1, team);
    });

    // dW_ih = dZ^T X, dW_hh = dZ^T H_prev, db = sum dZ, dX = dZ W_ih: K = rows for the
    // weight gradients, so dZ is transposed and X / H_prev packed in row pairs.
    const at::Tensor Xp = pack_pairs(s.rows, I_l, X.const_data_ptr<BFloat16>(), I_l, 1, bf16);
    at::Tensor dX = at::empty({s.rows, I_l}, f32);
    for (const auto d : c10::irange(s.D)) {
      const int64_t ld = layer * s.D + d, base = ld * s.weights_per_layer();
      gather_h_prev<BFloat16>(s, d, hx.const_data_ptr<BFloat16>() + ld * s.N * H,
                              Y.const_data_ptr<BFloat16>(), H_prev.mutable_data_ptr<BFloat16>());
      const at::Tensor Hp = pack_pairs(s.rows, H, H_prev.const_data_ptr<BFloat16>(), H, 1, bf16);
      avx512::transpose(s.rows, H, dZo.const_data_ptr<BFloat16>() + d * H, DH,
                        dZt.mutable_data_ptr<BFloat16>());
      at::Tensor g = at::empty({H, std::max(I_l, H)}, f32);
      avx512::gemm(H, I_l, s.rows, dZt.const_data_ptr<BFloat16>(), s.rows,
                   Xp.const_data_ptr<BFloat16>(), 2 * I_l, g.mutable_data_ptr<float>(), I_l,
                   false);
      grad_weights[base].copy_(g.view(-1).narrow(0, 0, H * I_l).view({H, I_l}));
      avx512::gemm(H, H, s.rows, dZt.const_data_ptr<BFloat16>(), s.rows,
                   Hp.const_data_ptr<BFloat16>(), 2 * H, g.mutable_data_ptr<float>(), H, false);
      grad_weights[base + 1].copy_(g.view(-1).narrow(0, 0, H * H).view({H, H}));
      if (s.has_biases) {
        const at::Tensor db = at::sum(dZ.narrow(1, d * H, H), {0});
        grad_weights[base + 2].copy_(db);
        grad_weights[base + 3].copy_(db);
      }
      const at::Tensor Wih = pack_pairs(H, I_l, weights[base].const_data_ptr<BFloat16>(), I_l, 1,
                                        bf16);
      avx512::gemm(s.rows, I_l, H, dZo.const_data_ptr<BFloat16>() + d * H, DH,
                   Wih.const_data_ptr<BFloat16>(), 2 * I_l, dX.mutable_data_ptr<float>(), I_l,
                   d == 1);
    }
    if (layer == 0) {
      grad_x2d.copy_(dX);
    } else {
      // The layer below's output gradient; dropout's backward is the same mask.
      if (masks.has_value() && masks->defined()) dX.mul_((*masks)[layer - 1]);
      dZ = dX;
    }
  }
  grad_hx.copy_(dhx);
}

// Rounds a list of float32 results back to the input's dtype.
std::vector<at::Tensor> to_dtype(std::vector<at::Tensor> ts, at::ScalarType dtype) {
  for (auto& t : ts) t = t.to(dtype);
  return ts;
}

using ForwardResult = std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>;

ForwardResult rnn_forward_cpu(const at::Tensor& input, at::TensorList hx, at::TensorList weights,
                              const std::optional<at::Tensor>& batch_sizes,
                              const std::optional<at::Tensor>& dropout_masks,
                              c10::string_view mode, bool has_biases, int64_t num_layers,
                              int64_t proj_size, bool bidirectional, bool train) {
  const char* op = "rnnfast.rnn_forward";
  const RnnSizes s = check_rnn_args(op, input, hx, weights, batch_sizes, dropout_masks, mode,
                                    has_biases, num_layers, proj_size, bidirectional, train);
  const bool elman = is_elman(s.cell);
  const bool bf16 = elman && use_bf16_path(input);
  if (is_reduced(input) && !bf16) {
    const auto dt = input.scalar_type();
    auto [o, h, w] = rnn_forward_cpu(to_f32(input), to_f32(hx), to_f32(weights), batch_sizes,
                                     to_f32(dropout_masks), mode, has_biases, num_layers,
                                     proj_size, bidirectional, train);
    return {o.to(dt), to_dtype(h, dt), to_dtype(w, dt)};
  }
  if (!bf16) check_cpu_dtype(op, input);
  ForwardOutputs out = allocate_forward_outputs(s, input);
  if (nothing_to_compute(s)) return {out.output, out.h_n, out.workspace};
  const at::Tensor x2d = input.contiguous().view({s.rows, s.I});
  const auto hx_c = contiguous_all(hx);
  const auto w = contiguous_all(weights);
  const at::Tensor out2d = out.output.view({s.rows, s.D * s.P});
  if (bf16) {
    forward_bf16(s, x2d, hx_c[0], w, dropout_masks, out2d, out.h_n[0], out.workspace[0]);
  } else {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnn_forward_cpu", [&] {
      if (elman)
        forward_impl<scalar_t>(s, x2d, hx_c[0], w, dropout_masks, out2d, out.h_n[0],
                               out.workspace[0]);
      else
        gated_forward<scalar_t>(s, x2d, hx_c, w, dropout_masks, out2d, out.h_n, out.workspace);
    });
  }
  return {out.output, out.h_n, out.workspace};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> rnn_backward_cpu(
    const std::optional<at::Tensor>& grad_output,
    const c10::List<std::optional<at::Tensor>>& grad_h_n, const at::Tensor& input,
    at::TensorList hx, at::TensorList weights, const std::optional<at::Tensor>& batch_sizes,
    const std::optional<at::Tensor>& dropout_masks, const at::Tensor& output,
    at::TensorList workspace, c10::string_view mode, bool has_biases, int64_t num_layers,
    int64_t proj_size, bool bidirectional) {
  const char* op = "rnnfast._rnn_backward";
  const RnnSizes s = check_rnn_args(op, input, hx, weights, batch_sizes, dropout_masks, mode,
                                    has_biases, num_layers, proj_size, bidirectional,
                                    /*train=*/true);
  check_rnn_backward_args(s, input, grad_output, grad_h_n, output, workspace);
  const bool elman = is_elman(s.cell);
  const bool bf16 = elman && use_bf16_path(input);
  if (is_reduced(input) && !bf16) {
    const auto dt = input.scalar_type();
    auto [gi, ghx, gw] = rnn_backward_cpu(
        to_f32(grad_output), to_f32(grad_h_n), to_f32(input), to_f32(hx), to_f32(weights),
        batch_sizes, to_f32(dropout_masks), to_f32(output), to_f32(workspace), mode, has_biases,
        num_layers, proj_size, bidirectional);
    return {gi.to(dt), to_dtype(ghx, dt), to_dtype(gw, dt)};
  }
  if (!bf16) check_cpu_dtype(op, input);

  BackwardOutputs out = allocate_backward_outputs(s, input, hx, weights);
  if (nothing_to_compute(s)) return {out.grad_input, out.grad_hx, out.grad_weights};
  // The bf16 kernels keep output and h_n gradients in float32.
  const at::ScalarType grad_type = bf16 ? at::kFloat : input.scalar_type();
  at::Tensor dY = initial_output_grad(s, grad_output, input, grad_type);
  std::vector<at::Tensor> ghn;
  for (const auto k : c10::irange(s.states())) {
    const at::Tensor g = value_or_undefined(grad_h_n.get(k));
    ghn.push_back(g.defined() ? g.to(grad_type).contiguous() : at::Tensor());
  }
  const at::Tensor x2d = input.contiguous().view({s.rows, s.I});
  const auto hx_c = contiguous_all(hx);
  const auto w = contiguous_all(weights);
  const at::Tensor out2d = output.contiguous().view({s.rows, s.D * s.P});
  const auto ws = contiguous_all(workspace);
  const at::Tensor grad_x2d = out.grad_input.view({s.rows, s.I});
  if (bf16) {
    backward_bf16(s, x2d, hx_c[0], w, dropout_masks, out2d, ws[0], dY, ghn[0], grad_x2d,
                  out.grad_hx[0], out.grad_weights);
  } else {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnn_backward_cpu", [&] {
      if (elman)
        backward_impl<scalar_t>(s, x2d, hx_c[0], w, dropout_masks, out2d, ws[0], dY, ghn[0],
                                grad_x2d, out.grad_hx[0], out.grad_weights);
      else
        gated_backward<scalar_t>(s, x2d, hx_c, w, dropout_masks, out2d, ws, dY, ghn, grad_x2d,
                                 out.grad_hx, out.grad_weights);
    });
  }
  return {out.grad_input, out.grad_hx, out.grad_weights};
}

// ---------------------------------------------------------------------------
// Cell
// ---------------------------------------------------------------------------

// h = act(h + bias) over a cell's (N, H) output. float32 on AVX-512 uses the step
// kernel with K = 0 (exactly this epilogue, with SLEEF's vector tanh); the generic
// pass calls scalar tanh per element in this build.
template <typename T>
void cell_bias_act(Activation act, int64_t N, int64_t H, const T* bias, T* h) {
  if constexpr (std::is_same_v<T, float>) {
    if (use_fast_path()) {
      avx512::StepArgs a;
      a.M = N;
      a.N = H;
      a.C = h;
      a.ldc = H;
      a.O = h;
      a.ldo = H;
      a.bias = bias;
      a.act = act;
      a.epilogue = avx512::Epilogue::Activate;
      avx512::step(a, 0, H);
      return;
    }
  }
  bias_act_rows<T>(act, N, H, bias, h, H, h, H);
}

// Rows and columns of the output per single-thread MKL call in the cell's forward
// (see there). Column blocks let a small batch use every thread too.
constexpr int64_t kCellRowBlock = 32;
constexpr int64_t kCellColBlock = 128;

at::Tensor rnn_cell_forward_cpu(const at::Tensor& input, const at::Tensor& hx,
                                const at::Tensor& w_ih, const at::Tensor& w_hh,
                                const std::optional<at::Tensor>& b_ih,
                                const std::optional<at::Tensor>& b_hh,
                                c10::string_view nonlinearity) {
  const char* op = "rnnfast.rnn_cell_forward";
  const CellSizes s = check_cell_args(op, input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity);
  if (is_reduced(input))
    return rnn_cell_forward_cpu(to_f32(input), to_f32(hx), to_f32(w_ih), to_f32(w_hh),
                                to_f32(b_ih), to_f32(b_hh), nonlinearity)
        .to(input.scalar_type());
  check_cpu_dtype(op, input);
  at::Tensor h = at::empty({s.N, s.H}, input.options());
  if (s.N == 0 || s.H == 0) return h;
  const at::Tensor x = input.contiguous(), h0 = hx.contiguous();
  const at::Tensor wi = w_ih.contiguous(), wh = w_hh.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnn_cell_forward_cpu", [&] {
    using T = scalar_t;
    std::vector<T> bias(s.H, T(0));
    if (s.has_bias) {
      const at::Tensor bi = b_ih->contiguous(), bh = b_hh->contiguous();
      for (const auto j : c10::irange(s.H))
        bias[j] = bi.const_data_ptr<T>()[j] + bh.const_data_ptr<T>()[j];
    }
    T* out = h.mutable_data_ptr<T>();
    // float32: the AVX-512 kernel would need W^T, a copy of both weights per call (more
    // than the product itself at small batch); MKL reads W in place. The output goes in
    // fixed blocks of rows x columns, one single-thread MKL call each, spread over
    // torch's threads: the blocks, hence the rounding, do not depend on the thread count.
    const bool by_blocks = std::is_same_v<T, float> && have_one_thread_blas();
    auto add_product = [&](int64_t K, const T* A, const T* W, T beta) {  // out (+)= A W^T
      if (!by_blocks) {
        gemm_any<T>(false, true, s.N, s.H, K, A, K, W, K, beta, out, s.H);
        return;
      }
      const int64_t grain = std::max<int64_t>(
          1, (1 << 19) / std::max<int64_t>(kCellRowBlock * kCellColBlock * K, 1));
      parallel_tiles(s.N, s.H, kCellRowBlock, kCellColBlock, grain,
                     [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
                       gemm_one_thread<T>(false, true, r1 - r0, c1 - c0, K, T(1), A + r0 * K, K,
                                          W + c0 * K, K, beta, out + r0 * s.H + c0, s.H);
                     });
    };
    add_product(s.I, x.const_data_ptr<T>(), wi.const_data_ptr<T>(), T(0));
    add_product(s.H, h0.const_data_ptr<T>(), wh.const_data_ptr<T>(), T(1));
    cell_bias_act<T>(s.act, s.N, s.H, bias.data(), out);
  });
  return h;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_cell_backward_cpu(
    const at::Tensor& grad_h, const at::Tensor& input, const at::Tensor& hx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& h, bool has_bias,
    c10::string_view nonlinearity) {
  const char* op = "rnnfast._rnn_cell_backward";
  const CellSizes s = check_cell_args(op, input, hx, w_ih, w_hh, std::nullopt, std::nullopt,
                                      nonlinearity);
  TORCH_CHECK(grad_h.sizes().equals({s.N, s.H}) && grad_h.scalar_type() == input.scalar_type(),
              op, ": grad_h must be a ", input.scalar_type(), " tensor of shape [", s.N, ", ",
              s.H, "], got ", grad_h.scalar_type(), " ", grad_h.sizes());
  TORCH_CHECK(h.sizes().equals({s.N, s.H}) && h.scalar_type() == input.scalar_type(), op,
              ": h must be a ", input.scalar_type(), " tensor of shape [", s.N, ", ", s.H,
              "], got ", h.scalar_type(), " ", h.sizes());
  if (is_reduced(input)) {
    const auto dt = input.scalar_type();
    auto [gx, ghx, gwi, gwh, gb] =
        rnn_cell_backward_cpu(to_f32(grad_h), to_f32(input), to_f32(hx), to_f32(w_ih),
                              to_f32(w_hh), to_f32(h), has_bias, nonlinearity);
    return {gx.to(dt), ghx.to(dt), gwi.to(dt), gwh.to(dt), gb.to(dt)};
  }
  check_cpu_dtype(op, input);
  at::Tensor dz = grad_h.clone(at::MemoryFormat::Contiguous);
  at::Tensor gx = at::empty({s.N, s.I}, input.options());
  at::Tensor ghx = at::empty({s.N, s.H}, input.options());
  at::Tensor gwi = at::empty({s.H, s.I}, input.options());
  at::Tensor gwh = at::empty({s.H, s.H}, input.options());
  at::Tensor gb = has_bias ? at::empty({s.H}, input.options()) : at::empty({0}, input.options());
  const at::Tensor x = input.contiguous(), h0 = hx.contiguous(), hc = h.contiguous();
  const at::Tensor wi = w_ih.contiguous(), wh = w_hh.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnn_cell_backward_cpu", [&] {
    using T = scalar_t;
    T* dzp = dz.mutable_data_ptr<T>();
    mul_act_grad_rows<T>(s.act, s.N, s.H, dzp, s.H, hc.const_data_ptr<T>(), s.H);
    gemm_any<T>(false, false, s.N, s.I, s.H, dzp, s.H, wi.const_data_ptr<T>(), s.I, T(0),
            gx.mutable_data_ptr<T>(), s.I);
    gemm_any<T>(false, false, s.N, s.H, s.H, dzp, s.H, wh.const_data_ptr<T>(), s.H, T(0),
            ghx.mutable_data_ptr<T>(), s.H);
    gemm_any<T>(true, false, s.H, s.I, s.N, dzp, s.H, x.const_data_ptr<T>(), s.I, T(0),
            gwi.mutable_data_ptr<T>(), s.I);
    gemm_any<T>(true, false, s.H, s.H, s.N, dzp, s.H, h0.const_data_ptr<T>(), s.H, T(0),
            gwh.mutable_data_ptr<T>(), s.H);
  });
  if (has_bias) at::sum_out(gb, dz, {0});
  return {gx, ghx, gwi, gwh, gb};
}

}  // namespace

}  // namespace rnnfast::cpu

namespace rnnfast {

std::string cpu_kernels() {
  if (cpu::avx512::bf16_supported()) return "avx512_bf16";
  if (cpu::avx512::supported()) return "avx512";
  if (cpu::avx2::cell_rows() != nullptr) return "avx2";
  return "generic";
}

}  // namespace rnnfast

namespace rnnfast::cpu {

TORCH_LIBRARY_IMPL(rnnfast, CPU, m) {
  m.impl("rnn_forward", &rnn_forward_cpu);
  m.impl("_rnn_backward", &rnn_backward_cpu);
  m.impl("rnn_cell_forward", &rnn_cell_forward_cpu);
  m.impl("_rnn_cell_backward", &rnn_cell_backward_cpu);
}

}  // namespace rnnfast::cpu
