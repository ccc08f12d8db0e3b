// The Elman cell on the CPU: its time loops for the sequence driver
// (sequence_cpu.h), and the bfloat16 kernels for AVX512-BF16 CPUs.
//
// The driver has put X W_ih^T in the output Y; per direction and step t the loops do
//   forward:   Y[t] += h_prev W_hh^T;  Y[t] = act(Y[t] + b_ih + b_hh)
//   backward:  dZ[t] *= act'(Y[t]);  dZ[t-1] += dZ[t] W_hh  (or grad_hx)
// with dZ, the output gradient plus grad_h_n where each sequence's state became h_n,
// in place of dY; the driver then takes dW_ih, dW_hh, db and dX from dZ. float32 on
// AVX-512 fuses each step into one kernel (step_avx512.h), with a thread team per
// layer; float32 on AVX2 runs each step's product on small_gemm.h's packed kernel;
// other types use BLAS per step.
#include "elman_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/irange.h>

#include <cstring>

#include "cpu_common.h"
#include "row_kernels.h"
#include "sequence_cpu.h"
#include "small_gemm.h"
#include "step_avx512.h"
#include "thread_teams.h"

namespace rnnfast::cpu {

using at::vec::Vectorized;

bool elman_fast_path() { return avx512::supported(); }

// h[r, :] = act(z[r, :] + bias) for r < nrows. z and h may alias (in place).
template <typename T>
void bias_act_rows(Activation act, int64_t nrows, int64_t H, const T* bias, const T* z,
                   int64_t ldz, T* h, int64_t ldh) {
  using Vec = Vectorized<T>;
  const int64_t grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(H, 1));
  if constexpr (std::is_same_v<T, float>) {
    // tanh through the SIMD rows of the gated cells (SLEEF's on AVX-512, the rational
    // one on AVX2: this file's at::vec is the generic build, whose tanh is scalar).
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

namespace {

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
// float32 + AVX-512: fused step kernel, one OpenMP team per layer (thread_teams.h)
// ---------------------------------------------------------------------------

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

// The per-step products of the BLAS time loops below: C (+)= A op(W), op(W) = W^T
// forward, W backward (W is H x H). float32 on AVX2 CPUs reads op(W) from panels packed
// once per layer-direction (step_panels, where pack_step_weights) with small_gemm.h's
// packed kernel: MKL's
// per-step call costs 1-2 us of dispatch at small batch and runs its products at 50-60
// GFLOP/s, the packed kernel at 75-85. A step of 2^20 multiply-adds or more splits its
// panels over torch's threads (each element is the same k-ordered sum either way).
template <typename T>
std::vector<T> step_panels(const RnnSizes& s, const T* W, bool transposed) {
  const int64_t H = s.H;
  std::vector<T> panels;
  if constexpr (std::is_same_v<T, float>) {
    if (pack_step_weights(s)) {
      panels.resize(small_gemm_packed_size(H, H));
      if (transposed)
        pack_panels_of_rows(H, H, [&](int64_t j) { return W + j * H; }, panels.data());
      else
        pack_small_gemm_b(H, H, W, H, panels.data());
    }
  }
  return panels;
}

template <typename T>
void step_product(const std::vector<T>& panels, bool transposed, int64_t M, int64_t H,
                  const T* A, int64_t lda, const T* W, T beta, T* C, int64_t ldc) {
  if (M == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (!panels.empty()) {
      static const SmallGemmPacked packed = avx2::small_gemm_packed();
      const int64_t n_panels = (H + kSmallGemmPanel - 1) / kSmallGemmPanel;
      const int64_t grain = M * H * H >= kOneThreadFlops ? 1 : n_panels;
      at::parallel_for(0, n_panels, grain, [&](int64_t p0, int64_t p1) {
        const int64_t n0 = p0 * kSmallGemmPanel, n1 = std::min(H, p1 * kSmallGemmPanel);
        packed(M, n1 - n0, H, A, lda, panels.data() + n0 * H, C + n0, ldc, beta != 0.f);
      });
      return;
    }
  }
  gemm_any<T>(false, transposed, M, H, H, A, lda, W, H, beta, C, ldc);
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
  const std::vector<T> panels = step_panels<T>(s, W, false);
  if (d == 0) {
    for (int64_t t = T_ - 1; t >= 0; --t) {
      T* dZt = dZd + off[t] * DH;
      mul_act_grad_rows<T>(s.act, bs[t], H, dZt, DH, Yd + off[t] * DH, DH);
      if (t > 0) {
        step_product<T>(panels, false, bs[t], H, dZt, DH, W, T(1), dZd + off[t - 1] * DH, DH);
      } else {
        step_product<T>(panels, false, bs[0], H, dZt, DH, W, T(0), dhx_d, H);
      }
    }
  } else {
    for (int64_t t = 0; t < T_; ++t) {
      T* dZt = dZd + off[t] * DH;
      const int64_t live_next = t + 1 < T_ ? bs[t + 1] : 0;
      mul_act_grad_rows<T>(s.act, bs[t], H, dZt, DH, Yd + off[t] * DH, DH);
      step_product<T>(panels, false, live_next, H, dZt, DH, W, T(1), dZd + off[t + 1] * DH, DH);
      step_product<T>(panels, false, bs[t] - live_next, H, dZt + live_next * DH, DH, W, T(0),
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

// The time loops of one layer (all directions) for the sequence driver.
template <typename T>
class ElmanLoops final : public CellLoops<T> {
 public:
  ElmanLoops(const RnnSizes& s, const std::vector<at::Tensor>& weights)
      : s_(s), lw_(gather_weights<T>(s, weights)) {}

  void forward(const LayerBuffers<T>& b) override {
    if constexpr (std::is_same_v<T, float>) {
      if (elman_fast_path()) {
        forward_fast(b);
        return;
      }
    }
    const int64_t H = s_.H, DH = s_.D * s_.H, T_ = s_.T;
    const auto& bs = s_.batch_sizes;
    const auto& off = s_.offsets;
    for (const auto d : c10::irange(s_.D)) {
      const LayerWeights<T>& w = lw_[b.layer * s_.D + d];
      const T* hx_d = b.hx[0] + d * s_.N * H;
      T* hn_d = b.h_n[0] + d * s_.N * H;
      T* Yd = b.Y + d * H;
      const std::vector<T> panels = step_panels<T>(s_, w.w_hh, true);
      if (d == 0) {
        for (int64_t t = 0; t < T_; ++t) {
          T* Yt = Yd + off[t] * DH;
          const T* h_prev = t == 0 ? hx_d : Yd + off[t - 1] * DH;
          const int64_t ld_prev = t == 0 ? H : DH;
          step_product<T>(panels, true, bs[t], H, h_prev, ld_prev, w.w_hh, T(1), Yt, DH);
          bias_act_rows<T>(s_.act, bs[t], H, w.bias.data(), Yt, DH, Yt, DH);
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
          step_product<T>(panels, true, live_next, H, Yd + off[t + 1] * DH, DH, w.w_hh, T(1),
                          Yt, DH);
          step_product<T>(panels, true, bs[t] - live_next, H, hx_d + live_next * H, H, w.w_hh,
                          T(1), Yt + live_next * DH, DH);
          bias_act_rows<T>(s_.act, bs[t], H, w.bias.data(), Yt, DH, Yt, DH);
        }
        copy_rows<T>(s_.N, H, Yd + off[0] * DH, DH, hn_d, H, false);
      }
    }
  }

  void backward(const LayerBuffers<T>& b,
                c10::function_ref<void(int64_t, const GateGrads<T>&)> tail) override {
    const int64_t H = s_.H, DH = s_.D * s_.H, NH = s_.N * s_.H;
    T* dZ = b.dY;
    if (b.grad_h_n[0])
      for (const auto d : c10::irange(s_.D)) add_grad_h_n<T>(s_, d, b.grad_h_n[0] + d * NH, dZ);

    bool fast = false;
    if constexpr (std::is_same_v<T, float>) {
      fast = elman_fast_path();
      if (fast) {
        run_directions(s_, [&](int64_t d, int64_t c0, int64_t c1, int team) {
          backward_direction_avx512<float>(s_, d, lw_[b.layer * s_.D + d].w_hh, H, b.Y, dZ,
                                           nullptr, b.grad_hx[0] + d * NH, c0, c1, team);
        });
      }
    }
    if (!fast)
      for (const auto d : c10::irange(s_.D))
        backward_direction<T>(s_, d, lw_[b.layer * s_.D + d].w_hh, b.Y, dZ,
                              b.grad_hx[0] + d * NH);

    if (H_prev_.empty()) H_prev_.resize(s_.rows * H);
    for (const auto d : c10::irange(s_.D)) {
      gather_h_prev<T>(s_, d, b.hx[0] + d * NH, b.Y, H_prev_.data());
      GateGrads<T> g;
      g.dGW = g.dGR = dZ + d * H;
      g.ldW = g.ldR = DH;
      g.h_prev = H_prev_.data();
      tail(d, g);
    }
  }

 private:
  // float32 on AVX-512: W_hh^T for the step kernel, then the directions on a team.
  void forward_fast(const LayerBuffers<T>& b) {
    const int64_t H = s_.H;
    std::vector<float> WT(s_.D * H * H);
    for (const auto d : c10::irange(s_.D))
      transpose_to(lw_[b.layer * s_.D + d].w_hh, H, H, H, WT.data() + d * H * H);
    run_directions(s_, [&](int64_t d, int64_t c0, int64_t c1, int team) {
      forward_direction_avx512<float>(s_, d, WT.data() + d * H * H, H,
                                      lw_[b.layer * s_.D + d].bias.data(),
                                      b.hx[0] + d * s_.N * H, b.Y, b.Y, b.h_n[0] + d * s_.N * H,
                                      c0, c1, team);
    });
  }

  const RnnSizes& s_;
  const std::vector<LayerWeights<T>> lw_;
  std::vector<T> H_prev_;  // (rows, H), one direction at a time
};

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

}  // namespace

bool use_bf16_path(const at::Tensor& input) {
  return input.scalar_type() == at::kBFloat16 && avx512::bf16_supported();
}

namespace {

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

}  // namespace

void elman_forward_bf16(const RnnSizes& s, const at::Tensor& x2d, const at::Tensor& hx,
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

void elman_backward_bf16(const RnnSizes& s, const at::Tensor& x2d, const at::Tensor& hx,
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

template <typename T>
std::unique_ptr<CellLoops<T>> make_elman_loops(const RnnSizes& s,
                                               const std::vector<at::Tensor>& weights) {
  return std::make_unique<ElmanLoops<T>>(s, weights);
}
template std::unique_ptr<CellLoops<float>> make_elman_loops<float>(
    const RnnSizes&, const std::vector<at::Tensor>&);
template std::unique_ptr<CellLoops<double>> make_elman_loops<double>(
    const RnnSizes&, const std::vector<at::Tensor>&);

#define RNNFAST_INSTANTIATE(T)                                                                 \
  template void bias_act_rows<T>(Activation, int64_t, int64_t, const T*, const T*, int64_t,    \
                                 T*, int64_t);                                                 \
  template void mul_act_grad_rows<T>(Activation, int64_t, int64_t, T*, int64_t, const T*,      \
                                     int64_t);
RNNFAST_INSTANTIATE(float)
RNNFAST_INSTANTIATE(double)
#undef RNNFAST_INSTANTIATE

}  // namespace rnnfast::cpu
