// CUDA kernels of the rnnfast ops: the thin torch glue around the framework-free
// core in kernels/rnn_cuda.cuh (csrc/cuda/*.cu). Same algorithm and row layout as
// the CPU engine (cpu/sequence_cpu.h, cpu/elman_cpu.cpp, cpu/gated_cpu.cpp). The
// Elman cell is described here; the gated cells (LSTM, GRU) have their own driver
// further down ("Gated cells"), per-step only.
//
// Forward, per layer: one GEMM projects the input of all steps for both directions
// (X @ [W_ih_fwd; W_ih_rev]^T); then per step and direction one recurrent GEMM
// (accumulating into the projection) and one fused bias + activation kernel.
// Backward, per layer: per step and direction one fused kernel (h_n gradient,
// activation derivative, gather of the previous hidden state) and one GEMM carrying
// the gradient to the previous step; then dW_ih, dW_hh (GEMMs), the bias gradients
// (deterministic column sums) per direction and dX (one GEMM for both directions).
//
// Persistent path (kernels/rnn_cuda.cuh, rnn_persistent.cu): at small batch the
// per-step loop of a layer, forward or backward, is replaced by one cooperative
// launch covering all steps and both directions; the projection and weight GEMMs
// stay. use_persistent() picks the path (RNNFAST_PERSISTENT overrides the heuristic).
//
// Bidirectional layers run their two directions concurrently: the reverse direction
// is enqueued on a second stream from torch's pool, forked from and joined back to
// the current stream with events (no host synchronization). GEMMs go through ATen's
// cuBLAS wrapper (torch's handle, the current stream, torch's TF32 and reduced-
// precision flags); float16/bfloat16 accumulate in float32.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

// at::cuda::blas::gemm needs the cuBLAS/cuSPARSE/cuSOLVER headers of the toolkit
// (through ATen/cuda/CUDAContext.h). Without them, the GEMMs go through at::mm_out /
// addmm_ on tensors wrapping the same memory (one dispatcher call per GEMM).
#if !defined(RNNFAST_NO_CUDABLAS) && __has_include(<ATen/cuda/CUDABlas.h>) && \
    __has_include(<cublas_v2.h>) && __has_include(<cublasLt.h>) &&          \
    __has_include(<cusparse.h>) && __has_include(<cusolverDn.h>)
#define RNNFAST_USE_CUDABLAS 1
#include <ATen/cuda/CUDABlas.h>
#else
#define RNNFAST_USE_CUDABLAS 0
#pragma message("rnnfast: cuBLAS headers not found; the GEMMs go through at::mm_out / addmm_")
#endif

#include "../kernels/rnn_cuda.cuh"
#include "../rnn_args.h"

namespace rnnfast::cuda {
namespace {

// ---------------------------------------------------------------------------
// Types, streams, GEMM
// ---------------------------------------------------------------------------

// The CUDA storage type of an ATen scalar type (same size and bits).
template <typename T>
struct CudaScalar {
  using type = T;
};
template <>
struct CudaScalar<at::Half> {
  using type = __half;
};
template <>
struct CudaScalar<at::BFloat16> {
  using type = __nv_bfloat16;
};
template <typename T>
using cu_t = typename CudaScalar<T>::type;
static_assert(sizeof(__half) == sizeof(at::Half) && sizeof(__nv_bfloat16) == sizeof(at::BFloat16));

template <typename T>
cu_t<T>* cu(T* p) {
  return reinterpret_cast<cu_t<T>*>(p);
}
template <typename T>
const cu_t<T>* cu(const T* p) {
  return reinterpret_cast<const cu_t<T>*>(p);
}

// A cudaEvent_t for ordering two streams (fork / join); never used for timing.
class Event {
 public:
  Event() { C10_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming)); }
  ~Event() { C10_CUDA_CHECK_WARN(cudaEventDestroy(event_)); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  // `waiter` runs its later work only after what `producer` has enqueued so far.
  void order(cudaStream_t producer, cudaStream_t waiter) {
    C10_CUDA_CHECK(cudaEventRecord(event_, producer));
    C10_CUDA_CHECK(cudaStreamWaitEvent(waiter, event_, 0));
  }

 private:
  cudaEvent_t event_ = nullptr;
};

// The second stream of bidirectional layers: one stream from torch's pool per
// thread and device, kept for the thread's lifetime (a fresh pool stream per call
// would give cuBLAS a new workspace per stream, up to the pool's size).
c10::cuda::CUDAStream side_stream(c10::DeviceIndex device) {
  thread_local std::vector<std::optional<c10::cuda::CUDAStream>> streams;
  if (static_cast<size_t>(device) >= streams.size()) streams.resize(device + 1);
  if (!streams[device]) streams[device].emplace(c10::cuda::getStreamFromPool(false, device));
  return *streams[device];
}

// The streams of a call: direction 0 on torch's current stream, direction 1 (when
// bidirectional) on side_stream(), forked from the current stream and joined back
// to it. Making the side stream current around direction 1's work makes ATen's
// cuBLAS calls run there too.
class DirectionStreams {
 public:
  DirectionStreams(int64_t D, c10::DeviceIndex device)
      : main_(c10::cuda::getCurrentCUDAStream(device)) {
    if (D == 2) {
      side_.emplace(side_stream(device));
      fork_.emplace();
      join_.emplace();
    }
  }
  cudaStream_t stream(int64_t d) const { return d == 0 ? main_.stream() : side_->stream(); }
  // Runs f() with direction d's stream current.
  template <typename F>
  void run(int64_t d, F&& f) const {
    if (d == 0) {
      f();
    } else {
      c10::cuda::CUDAStreamGuard guard(*side_);
      f();
    }
  }
  // Direction 1 starts after everything enqueued so far on the current stream.
  void fork() {
    if (side_) fork_->order(main_.stream(), side_->stream());
  }
  // The current stream continues after everything enqueued so far on direction 1.
  void join() {
    if (side_) join_->order(side_->stream(), main_.stream());
  }

 private:
  c10::cuda::CUDAStream main_;
  std::optional<c10::cuda::CUDAStream> side_;
  std::optional<Event> fork_, join_;
};

// Row-major C[M,N] = op(A)[M,K] @ op(B)[K,N] (+ C when accumulate) on the current
// stream; A, B, C have row strides lda, ldb, ldc (C may be a column block).
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
          const T* B, int64_t ldb, bool accumulate, T* C, int64_t ldc, c10::Device device) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // an empty sum: C is zero (or unchanged)
    if (!accumulate) {
      C10_CUDA_CHECK(cudaMemset2DAsync(C, ldc * sizeof(T), 0, N * sizeof(T), M,
                                       c10::cuda::getCurrentCUDAStream(device.index())));
    }
    return;
  }
#if RNNFAST_USE_CUDABLAS
  using opmath_t = at::opmath_type<T>;
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T.
  at::cuda::blas::gemm<T>(trans_b ? 't' : 'n', trans_a ? 't' : 'n', N, M, K, opmath_t(1), B, ldb,
                          A, lda, accumulate ? opmath_t(1) : opmath_t(0), C, ldc);
#else
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value).device(device);
  auto wrap = [&](const T* p, bool trans, int64_t rows, int64_t cols, int64_t ld) {
    at::Tensor t = trans ? at::from_blob(const_cast<T*>(p), {cols, rows}, {ld, 1}, opts)
                         : at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1}, opts);
    return trans ? t.t() : t;
  };
  at::Tensor a = wrap(A, trans_a, M, K, lda), b = wrap(B, trans_b, K, N, ldb);
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (accumulate) {
    c.addmm_(a, b);
  } else {
    at::mm_out(c, a, b);
  }
#endif
}

// ---------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------

// W_ih of both directions stacked, (D*H, I_l): one GEMM serves both directions.
at::Tensor stacked_w_ih(const RnnSizes& s, const std::vector<at::Tensor>& w, int64_t layer) {
  const int64_t per = s.weights_per_layer();
  if (s.D == 1) return w[layer * per];
  return at::cat({w[(layer * 2) * per], w[(layer * 2 + 1) * per]}, 0);
}

// W_hh of layer-direction ld (= layer * D + d).
template <typename T>
const T* w_hh_ptr(const RnnSizes& s, const std::vector<at::Tensor>& w, int64_t ld) {
  return w[ld * s.weights_per_layer() + 1].const_data_ptr<T>();
}

template <typename T>
const T* bias_ptr(const RnnSizes& s, const std::vector<at::Tensor>& w, int64_t ld, int64_t k) {
  return s.has_biases ? w[ld * s.weights_per_layer() + k].const_data_ptr<T>() : nullptr;
}

// ---------------------------------------------------------------------------
// Persistent path: choice and launch
// ---------------------------------------------------------------------------

// RNNFAST_PERSISTENT: unset or "auto" lets the heuristic below choose; "1" takes the
// persistent kernels whenever the problem fits them (the limits in rnn_cuda.cuh and
// all blocks resident at once); "0" never does.
enum class PersistentMode { Auto, Always, Never };

PersistentMode persistent_mode() {
  const char* env = std::getenv("RNNFAST_PERSISTENT");
  const std::string v = env == nullptr ? "" : env;
  if (v.empty() || v == "auto") return PersistentMode::Auto;
  if (v == "1" || v == "on" || v == "always") return PersistentMode::Always;
  if (v == "0" || v == "off" || v == "never") return PersistentMode::Never;
  TORCH_CHECK(false, "rnnfast: RNNFAST_PERSISTENT must be auto, 1 or 0, got '", v, "'");
}

// The heuristic's batch limit: up to here a step is a thin GEMM whose launch and
// W_hh re-read dominate; above, the per-step cuBLAS GEMMs use the chip better.
constexpr int64_t kAutoPersistentMaxRows = 64;

// Whether this call's recurrence (forward or backward) runs the persistent kernels.
template <typename T>
bool use_persistent(const RnnSizes& s, c10::Device device, bool backward) {
  if (!is_elman(s.cell)) return false;  // the persistent kernels are Elman-only so far
  if constexpr (std::is_same_v<T, double>) {
    return false;  // float64 is for gradcheck; the per-step path serves it
  } else {
    const PersistentMode mode = persistent_mode();
    if (mode == PersistentMode::Never) return false;
    if (s.N < 1 || s.N > kPersistentMaxRows || s.H < 1 || s.H > kPersistentMaxH) return false;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    C10_CUDA_CHECK(cudaStreamIsCapturing(
        c10::cuda::getCurrentCUDAStream(device.index()).stream(), &capture));
    const bool capturing = capture != cudaStreamCaptureStatusNone;
    // A captured graph would replay the step table's copy from a temporary pinned buffer.
    if (capturing && s.packed) return false;
    if (mode == PersistentMode::Auto) {
      if (s.N > kAutoPersistentMaxRows) return false;
      // Cooperative launches inside CUDA graphs are not measured yet: auto captures the
      // per-step path.
      if (capturing) return false;
    }
    int64_t resident = 0;
    C10_CUDA_CHECK(persistent_capacity<cu_t<T>>(s.N, s.H, device.index(), backward, &resident));
    return resident >= s.D * persistent_blocks_per_direction(s.H);
  }
}

// The step table of a call on the device (batch sizes and row offsets, packed input
// only: one copy per call, never inside the time loop) and the sequence descriptor.
class PersistentRun {
 public:
  PersistentRun(const RnnSizes& s, c10::Device device) : device_(device) {
    seq_.act = s.act;
    seq_.T = s.T;
    seq_.N = s.N;
    seq_.H = s.H;
    seq_.D = s.D;
    if (s.packed) {
      const at::Tensor host = at::empty(
          {2, s.T}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
      int64_t* h = host.mutable_data_ptr<int64_t>();
      std::copy(s.batch_sizes.begin(), s.batch_sizes.end(), h);
      std::copy(s.offsets.begin(), s.offsets.end(), h + s.T);
      steps_ = at::empty({2, s.T}, at::TensorOptions().dtype(at::kLong).device(device));
      steps_.copy_(host, /*non_blocking=*/true);
      seq_.batch_sizes = steps_.const_data_ptr<int64_t>();
      seq_.offsets = seq_.batch_sizes + s.T;
    }
  }
  // The descriptor for one launch, with fresh zeroed step counters.
  PersistentSequence next_launch() {
    counters_ = at::zeros({seq_.D * kPersistentCounterStride},
                          at::TensorOptions().dtype(at::kLong).device(device_));
    PersistentSequence seq = seq_;
    seq.step_counters =
        reinterpret_cast<unsigned long long*>(counters_.mutable_data_ptr<int64_t>());
    persistent_launch_counter()++;
    return seq;
  }

 private:
  c10::Device device_;
  PersistentSequence seq_;
  at::Tensor steps_, counters_;
};

// ---------------------------------------------------------------------------
// rnn_forward
// ---------------------------------------------------------------------------

template <typename T>
void forward_step(const RnnSizes& s, int64_t layer, int64_t d, int64_t t,
                  const std::vector<at::Tensor>& w, const T* hx, T* Y, T* h_n,
                  c10::Device device, cudaStream_t stream) {
  const int64_t H = s.H, DH = s.D * s.H, T_ = s.T;
  const auto& bs = s.batch_sizes;
  const auto& off = s.offsets;
  const int64_t ld = layer * s.D + d;
  const T* w_hh = w_hh_ptr<T>(s, w, ld);
  const T* hx_d = hx + ld * s.N * H;
  T* Yd = Y + d * H;
  T* Yt = Yd + off[t] * DH;
  const int64_t live_next = t + 1 < T_ ? bs[t + 1] : 0;

  BiasActParams<cu_t<T>> p;
  p.act = s.act;
  p.rows = bs[t];
  p.H = H;
  p.b_ih = cu(bias_ptr<T>(s, w, ld, 2));
  p.b_hh = cu(bias_ptr<T>(s, w, ld, 3));
  p.y = cu(Yt);
  p.ldy = DH;
  p.ldhn = H;
  if (d == 0) {
    const T* h_prev = t == 0 ? hx_d : Yd + off[t - 1] * DH;
    gemm<T>(false, true, bs[t], H, H, h_prev, t == 0 ? H : DH, w_hh, H, true, Yt, DH, device);
    // Rows whose sequence ends at this step hold their final state.
    p.h_n = cu(h_n + ld * s.N * H);
    p.hn_start = live_next;
  } else {
    // Rows alive at t+1 continue from there; rows that start at t start from hx.
    if (live_next > 0)
      gemm<T>(false, true, live_next, H, H, Yd + off[t + 1] * DH, DH, w_hh, H, true, Yt, DH,
              device);
    gemm<T>(false, true, bs[t] - live_next, H, H, hx_d + live_next * H, H, w_hh, H, true,
            Yt + live_next * DH, DH, device);
    p.h_n = t == 0 ? cu(h_n + ld * s.N * H) : nullptr;
    p.hn_start = 0;
  }
  C10_CUDA_CHECK(bias_act_forward(p, stream));
}

template <typename T>
void forward_impl(const RnnSizes& s, const at::Tensor& x2d, const at::Tensor& hx,
                  const std::vector<at::Tensor>& w, const std::optional<at::Tensor>& masks,
                  const at::Tensor& out2d, const at::Tensor& h_n, const at::Tensor& workspace) {
  const c10::Device device = x2d.device();
  DirectionStreams streams(s.D, device.index());
  std::optional<PersistentRun> persistent;
  if (use_persistent<T>(s, device, /*backward=*/false)) persistent.emplace(s, device);
  for (const auto layer : c10::irange(s.NL)) {
    const at::Tensor X = layer_input(layer, x2d, workspace, masks).contiguous();
    const at::Tensor Y = layer + 1 == s.NL ? out2d : workspace[layer];
    const int64_t I_l = s.layer_input_size(layer);
    const at::Tensor W = stacked_w_ih(s, w, layer);
    T* y = Y.mutable_data_ptr<T>();
    gemm<T>(false, true, s.rows, s.D * s.H, I_l, X.const_data_ptr<T>(), I_l, W.const_data_ptr<T>(),
            I_l, false, y, s.D * s.H, device);
    if (persistent) {
      PersistentForwardParams<cu_t<T>> p;
      p.seq = persistent->next_launch();
      for (const auto d : c10::irange(s.D)) {
        const int64_t ld = layer * s.D + d;
        p.w_hh[d] = cu(w_hh_ptr<T>(s, w, ld));
        p.b_ih[d] = cu(bias_ptr<T>(s, w, ld, 2));
        p.b_hh[d] = cu(bias_ptr<T>(s, w, ld, 3));
        p.hx[d] = cu(hx.const_data_ptr<T>() + ld * s.N * s.H);
        p.h_n[d] = cu(h_n.mutable_data_ptr<T>() + ld * s.N * s.H);
      }
      p.y = cu(y);
      C10_CUDA_CHECK(persistent_forward(p, streams.stream(0)));
      continue;
    }
    streams.fork();
    // Interleave the directions step by step so that both streams have work queued.
    for (const auto i : c10::irange(s.T)) {
      for (const auto d : c10::irange(s.D)) {
        const int64_t t = d == 0 ? i : s.T - 1 - i;
        streams.run(d, [&] {
          forward_step<T>(s, layer, d, t, w, hx.const_data_ptr<T>(), y,
                          h_n.mutable_data_ptr<T>(), device, streams.stream(d));
        });
      }
    }
    streams.join();
  }
}

// ---------------------------------------------------------------------------
// _rnn_backward
// ---------------------------------------------------------------------------

template <typename T>
void backward_step(const RnnSizes& s, int64_t layer, int64_t d, int64_t t,
                   const std::vector<at::Tensor>& w, const T* hx, const T* Y, T* dZ,
                   const T* grad_h_n, T* grad_hx, T* H_prev, c10::Device device,
                   cudaStream_t stream) {
  const int64_t H = s.H, DH = s.D * s.H, T_ = s.T;
  const auto& bs = s.batch_sizes;
  const auto& off = s.offsets;
  const int64_t ld = layer * s.D + d;
  const T* w_hh = w_hh_ptr<T>(s, w, ld);
  const T* hx_d = hx + ld * s.N * H;
  const T* dhn_d = grad_h_n ? grad_h_n + ld * s.N * H : nullptr;
  T* dhx_d = grad_hx + ld * s.N * H;
  const T* Yd = Y + d * H;
  T* dZd = dZ + d * H;
  T* dZt = dZd + off[t] * DH;
  const int64_t live_next = t + 1 < T_ ? bs[t + 1] : 0;

  ActGradParams<cu_t<T>> p;
  p.act = s.act;
  p.rows = bs[t];
  p.H = H;
  p.grad = cu(dZt);
  p.ld_grad = DH;
  p.dz = cu(dZt);
  p.ld_dz = DH;
  p.h = cu(Yd + off[t] * DH);
  p.ld_h = DH;
  p.ld_grad_h_n = H;
  p.h_prev = cu(H_prev + off[t] * H);
  p.ld_h_prev = H;
  p.prev_b = cu(hx_d);
  p.ld_prev_b = H;
  if (d == 0) {
    // dL/dh_n enters at the step where each sequence ends.
    p.grad_h_n = cu(dhn_d);
    p.ghn_start = live_next;
    p.prev_a = cu(t == 0 ? hx_d : Yd + off[t - 1] * DH);
    p.ld_prev_a = t == 0 ? H : DH;
    p.prev_split = bs[t];
    C10_CUDA_CHECK(act_grad_backward(p, stream));
    if (t > 0) {
      gemm<T>(false, false, bs[t], H, H, dZt, DH, w_hh, H, true, dZd + off[t - 1] * DH, DH,
              device);
    } else {
      gemm<T>(false, false, bs[0], H, H, dZt, DH, w_hh, H, false, dhx_d, H, device);
    }
  } else {
    p.grad_h_n = t == 0 ? cu(dhn_d) : nullptr;
    p.ghn_start = 0;
    p.prev_a = live_next > 0 ? cu(Yd + off[t + 1] * DH) : nullptr;
    p.ld_prev_a = DH;
    p.prev_split = live_next;
    C10_CUDA_CHECK(act_grad_backward(p, stream));
    if (live_next > 0)
      gemm<T>(false, false, live_next, H, H, dZt, DH, w_hh, H, true, dZd + off[t + 1] * DH, DH,
              device);
    gemm<T>(false, false, bs[t] - live_next, H, H, dZt + live_next * DH, DH, w_hh, H, false,
            dhx_d + live_next * H, H, device);
  }
}

template <typename T>
void backward_impl(const RnnSizes& s, const at::Tensor& x2d, const at::Tensor& hx,
                   const std::vector<at::Tensor>& w, const std::optional<at::Tensor>& masks,
                   const at::Tensor& out2d, const at::Tensor& workspace, at::Tensor dZ,
                   const at::Tensor& grad_h_n, const at::Tensor& grad_x2d,
                   const at::Tensor& grad_hx, const std::vector<at::Tensor>& grad_weights) {
  using acc_t = acc_type<cu_t<T>>;
  const c10::Device device = x2d.device();
  const int64_t H = s.H, DH = s.D * s.H;
  DirectionStreams streams(s.D, device.index());
  // Per direction: the hidden state each row started from, and the column-sum scratch.
  const at::Tensor H_prev = at::empty({s.D, s.rows, H}, x2d.options());
  const int64_t ws_elems = column_sum_workspace_elems(s.rows, H);
  const at::Tensor sum_ws =
      at::empty({s.D, ws_elems},
                x2d.options().dtype(std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat));
  const T* ghn = grad_h_n.defined() ? grad_h_n.const_data_ptr<T>() : nullptr;
  std::optional<PersistentRun> persistent;
  if (use_persistent<T>(s, device, /*backward=*/true)) persistent.emplace(s, device);

  for (int64_t layer = s.NL - 1; layer >= 0; --layer) {
    const at::Tensor X = layer_input(layer, x2d, workspace, masks).contiguous();
    const at::Tensor Y = layer + 1 == s.NL ? out2d : workspace[layer];
    const int64_t I_l = s.layer_input_size(layer);
    const at::Tensor dX = layer == 0 ? grad_x2d : at::empty({s.rows, I_l}, x2d.options());
    T* dz = dZ.mutable_data_ptr<T>();

    if (persistent) {
      // The whole recurrence of both directions, on the current stream.
      PersistentBackwardParams<cu_t<T>> p;
      p.seq = persistent->next_launch();
      for (const auto d : c10::irange(s.D)) {
        const int64_t ld = layer * s.D + d;
        p.w_hh[d] = cu(w_hh_ptr<T>(s, w, ld));
        p.hx[d] = cu(hx.const_data_ptr<T>() + ld * s.N * H);
        p.grad_h_n[d] = ghn != nullptr ? cu(ghn + ld * s.N * H) : nullptr;
        p.grad_hx[d] = cu(grad_hx.mutable_data_ptr<T>() + ld * s.N * H);
        p.h_prev[d] = cu(H_prev.mutable_data_ptr<T>() + d * s.rows * H);
      }
      p.y = cu(Y.const_data_ptr<T>());
      p.dz = cu(dz);
      C10_CUDA_CHECK(persistent_backward(p, streams.stream(0)));
    }
    streams.fork();
    for (const auto i : c10::irange(persistent ? 0 : s.T)) {
      for (const auto d : c10::irange(s.D)) {
        const int64_t t = d == 0 ? s.T - 1 - i : i;
        streams.run(d, [&] {
          backward_step<T>(s, layer, d, t, w, hx.const_data_ptr<T>(), Y.const_data_ptr<T>(), dz,
                           ghn, grad_hx.mutable_data_ptr<T>(),
                           H_prev.mutable_data_ptr<T>() + d * s.rows * H, device,
                           streams.stream(d));
        });
      }
    }
    // Weight and bias gradients of each direction, on its own stream: single GEMMs
    // and a column sum over all rows (K = rows).
    for (const auto d : c10::irange(s.D)) {
      streams.run(d, [&] {
        const int64_t base = (layer * s.D + d) * s.weights_per_layer();
        const T* dZd = dz + d * H;
        gemm<T>(true, false, H, I_l, s.rows, dZd, DH, X.const_data_ptr<T>(), I_l, false,
                grad_weights[base].mutable_data_ptr<T>(), I_l, device);
        gemm<T>(true, false, H, H, s.rows, dZd, DH, H_prev.const_data_ptr<T>() + d * s.rows * H,
                H, false, grad_weights[base + 1].mutable_data_ptr<T>(), H, device);
        if (s.has_biases) {
          C10_CUDA_CHECK(column_sum(cu(dZd), s.rows, H, DH,
                                    cu(grad_weights[base + 2].mutable_data_ptr<T>()),
                                    cu(grad_weights[base + 3].mutable_data_ptr<T>()),
                                    sum_ws.mutable_data_ptr<acc_t>() + d * ws_elems,
                                    streams.stream(d)));
        }
      });
    }
    streams.join();

    const at::Tensor W = stacked_w_ih(s, w, layer);
    gemm<T>(false, false, s.rows, I_l, DH, dz, DH, W.const_data_ptr<T>(), I_l, false,
            dX.mutable_data_ptr<T>(), I_l, device);
    if (layer > 0) {
      // The layer below's output gradient; dropout's backward is the same mask.
      if (masks.has_value() && masks->defined()) dX.mul_((*masks)[layer - 1]);
      dZ = dX;
    }
  }
}

// ---------------------------------------------------------------------------
// Gated cells (LSTM with proj_size, GRU): the per-step path
// ---------------------------------------------------------------------------
//
// The same shape as the Elman driver above (layer loop, dropout through layer_input,
// one projection GEMM for both directions, two streams, weight-gradient tail per
// direction, one dX GEMM), written next to it so that the Elman code stays as tested.
// Buffers: the gates (rows, D*G*H) and c / hn (rows, D*H) are the workspace's with
// train, else scratch reused by every layer (as on the CPU, cpu/sequence_cpu.cpp).
//
// Forward, per step and direction (StepPlan, kernels/cells.h):
//   rec = h_prev W_hh^T          one GEMM per source of h_prev (the previous step's
//                                rows, h0's rows): no gather
//   cell kernel                  gates, c / hn, m (LSTM) or h (GRU), c_n rows
//   h = m W_hr^T                 LSTM with proj_size, one GEMM into the output rows
//   h_n rows                     a copy, where sequences end
// Backward, per step (reverse) and direction:
//   [dh = dY + carried, dm = dH W_hr]   proj_size only (a kernel and a GEMM); otherwise
//                                       dh is formed inside the cell kernel
//   cell kernel                  dG_W, dG_R (GRU), carried dc, GRU's direct carry
//                                dh z, gather of h_prev, m (proj_size)
//   carried dh (+)= dG_R W_hh    one GEMM into grad_hx's rows
// then per direction dW_ih = dG_W^T X, dW_hh = dG_R^T H_prev, [dW_hr = dH^T M], the
// bias gradients (column sums), and dX = dG_W [W_ih_fwd; W_ih_rev] (one GEMM).
// float16 / bfloat16: every buffer (gates, c, hn, rec, the carried gradients) is in
// the input's dtype, as the Elman path keeps its pre-activations and dZ; the cell
// math and the GEMMs accumulate in float32, and the bias column sums use a float32
// scratch.

// One layer-direction's weights.
template <typename T>
struct GatedWeights {
  const T* w_hh = nullptr;  // (G*H, P)
  const T* b_ih = nullptr;  // (G*H) or nullptr
  const T* b_hh = nullptr;
  const T* w_hr = nullptr;  // (P, H) or nullptr
};

template <typename T>
GatedWeights<T> gated_weights(const RnnSizes& s, const std::vector<at::Tensor>& w, int64_t layer,
                              int64_t d) {
  GatedWeights<T> g;
  g.w_hh = w[s.weight_index(layer, d, 1)].const_data_ptr<T>();
  if (s.has_biases) {
    g.b_ih = w[s.weight_index(layer, d, 2)].const_data_ptr<T>();
    g.b_hh = w[s.weight_index(layer, d, 3)].const_data_ptr<T>();
  }
  if (s.has_proj) g.w_hr = w[s.w_hr_index(layer, d)].const_data_ptr<T>();
  return g;
}

// One layer's buffers as the step functions see them (whole rows; direction d's
// columns are selected inside). h0 / c0 / h_n / c_n / grad_* are this layer's blocks
// of the (NL*D, N, width) tensors; direction d's is at + d*N*width.
template <typename T>
struct GatedLayer {
  const T* h0 = nullptr;   // (D, N, P)
  const T* c0 = nullptr;   // (D, N, H), LSTM
  T* Y = nullptr;          // (rows, D*P): the layer's output
  T* gates = nullptr;      // (rows, D*G*H)
  T* aux = nullptr;        // (rows, D*H): c or hn
  // forward
  T* h_n = nullptr;        // (D, N, P)
  T* c_n = nullptr;        // (D, N, H), LSTM
  T* rec = nullptr;        // (D, N, G*H) scratch
  T* m = nullptr;          // (D, N, H) scratch (proj_size) in the forward; (D, rows, H)
                           // in the backward (M, for dW_hr)
  // backward
  T* dY = nullptr;         // (rows, D*P): output gradient in, dH out
  const T* grad_h_n = nullptr;  // (D, N, P) or nullptr
  const T* grad_c_n = nullptr;  // (D, N, H) or nullptr
  T* grad_hx = nullptr;    // (D, N, P): the carried dh, then grad_h0
  T* grad_cx = nullptr;    // (D, N, H): the carried dc, then grad_c0
  T* dGW = nullptr;        // (rows, D*G*H)
  T* dGR = nullptr;        // (rows, D*G*H): GRU's; LSTM's is dGW
  T* H_prev = nullptr;     // (D, rows, P)
  T* dM = nullptr;         // (D, N, H) scratch (proj_size)
};

template <typename T>
const T* block_of(const T* p, int64_t offset) {
  return p != nullptr ? p + offset : nullptr;
}
template <typename T>
T* block_of(T* p, int64_t offset) {
  return p != nullptr ? p + offset : nullptr;
}

template <typename T>
void gated_forward_step(const RnnSizes& s, int64_t d, int64_t i, const GatedWeights<T>& w,
                        const GatedLayer<T>& L, c10::Device device, cudaStream_t stream) {
  const int64_t H = s.H, P = s.P, GH = s.G * s.H;
  const int64_t ldY = s.D * P, ldG = s.D * GH, ldA = s.D * H;
  const bool lstm = s.cell == CellKind::Lstm;
  const StepPlan p = s.plan(d, i);
  T* Yd = L.Y + d * P;
  T* Gd = L.gates + d * GH;
  T* Ad = L.aux + d * H;
  const T* h0 = L.h0 + d * s.N * P;
  T* rec = L.rec + d * s.N * GH;
  T* m = block_of(L.m, d * s.N * H);

  // rec = h_prev W_hh^T: rows < split continue from the previous step, the rest from h0.
  gemm<T>(false, true, p.split, GH, P, Yd + p.prev_offset * ldY, ldY, w.w_hh, P, false, rec, GH,
          device);
  gemm<T>(false, true, p.rows - p.split, GH, P, h0 + p.split * P, P, w.w_hh, P, false,
          rec + p.split * GH, GH, device);

  GatedForwardParams<cu_t<T>> q;
  q.rows = p.rows;
  q.H = H;
  q.gates = cu(Gd + p.offset * ldG);
  q.ld_gates = ldG;
  q.rec = cu(static_cast<const T*>(rec));
  q.ld_rec = GH;
  q.b_ih = cu(w.b_ih);
  q.b_hh = cu(w.b_hh);
  q.prev_split = p.split;
  if (lstm) {  // c_prev
    q.prev_a = cu(static_cast<const T*>(Ad + p.prev_offset * ldA));
    q.ld_prev_a = ldA;
    q.prev_b = cu(L.c0 + d * s.N * H);
    q.ld_prev_b = H;
    q.state_n = cu(L.c_n + d * s.N * H);
    q.n_begin = p.end_begin;
    q.n_end = p.end_end;
  } else {  // h_prev (P == H)
    q.prev_a = cu(static_cast<const T*>(Yd + p.prev_offset * ldY));
    q.ld_prev_a = ldY;
    q.prev_b = cu(h0);
    q.ld_prev_b = P;
  }
  q.aux = cu(Ad + p.offset * ldA);
  q.ld_aux = ldA;
  if (s.has_proj) {
    q.out = cu(m);
    q.ld_out = H;
  } else {
    q.out = cu(Yd + p.offset * ldY);
    q.ld_out = ldY;
  }
  C10_CUDA_CHECK(lstm ? lstm_forward_step(q, stream) : gru_forward_step(q, stream));
  if (s.has_proj)
    gemm<T>(false, true, p.rows, P, H, m, H, w.w_hr, H, false, Yd + p.offset * ldY, ldY, device);
  // Rows whose sequence ends at this step hold their final h.
  if (p.end_end > p.end_begin) {
    C10_CUDA_CHECK(copy_rows(cu(static_cast<const T*>(Yd + (p.offset + p.end_begin) * ldY)),
                             ldY, cu(L.h_n + d * s.N * P + p.end_begin * P), P,
                             p.end_end - p.end_begin, P, stream));
  }
}

template <typename T>
void gated_forward_impl(const RnnSizes& s, const at::Tensor& x2d,
                        const std::vector<at::Tensor>& hx, const std::vector<at::Tensor>& w,
                        const std::optional<at::Tensor>& masks, const at::Tensor& out2d,
                        const std::vector<at::Tensor>& h_n,
                        const std::vector<at::Tensor>& workspace) {
  const c10::Device device = x2d.device();
  const int64_t H = s.H, P = s.P, GH = s.G * s.H;
  const bool lstm = s.cell == CellKind::Lstm;
  const auto opts = x2d.options();
  DirectionStreams streams(s.D, device.index());
  at::Tensor gates_scratch, aux_scratch;
  if (!s.train) {
    gates_scratch = at::empty({s.rows, s.D * GH}, opts);
    aux_scratch = at::empty({s.rows, s.D * H}, opts);
  }
  const at::Tensor rec = at::empty({s.D, s.N, GH}, opts);
  const at::Tensor m = s.has_proj ? at::empty({s.D, s.N, H}, opts) : at::Tensor();
  for (const auto layer : c10::irange(s.NL)) {
    const at::Tensor X = layer_input(layer, x2d, workspace[0], masks).contiguous();
    const at::Tensor Y = layer + 1 == s.NL ? out2d : workspace[0][layer];
    const int64_t I_l = s.layer_input_size(layer);
    GatedLayer<T> L;
    L.h0 = hx[0].const_data_ptr<T>() + layer * s.D * s.N * P;
    L.h_n = h_n[0].mutable_data_ptr<T>() + layer * s.D * s.N * P;
    if (lstm) {
      L.c0 = hx[1].const_data_ptr<T>() + layer * s.D * s.N * H;
      L.c_n = h_n[1].mutable_data_ptr<T>() + layer * s.D * s.N * H;
    }
    L.Y = Y.mutable_data_ptr<T>();
    L.gates = (s.train ? workspace[1][layer] : gates_scratch).mutable_data_ptr<T>();
    L.aux = (s.train ? workspace[2][layer] : aux_scratch).mutable_data_ptr<T>();
    L.rec = rec.mutable_data_ptr<T>();
    L.m = s.has_proj ? m.mutable_data_ptr<T>() : nullptr;
    // The input projection of every step, both directions: X @ [W_ih_fwd; W_ih_rev]^T.
    const at::Tensor W = stacked_w_ih(s, w, layer);
    gemm<T>(false, true, s.rows, s.D * GH, I_l, X.const_data_ptr<T>(), I_l,
            W.const_data_ptr<T>(), I_l, false, L.gates, s.D * GH, device);
    GatedWeights<T> weights[2];
    for (const auto d : c10::irange(s.D)) weights[d] = gated_weights<T>(s, w, layer, d);
    streams.fork();
    // Interleave the directions step by step so that both streams have work queued.
    for (const auto i : c10::irange(s.T)) {
      for (const auto d : c10::irange(s.D)) {
        streams.run(d, [&] {
          gated_forward_step<T>(s, d, i, weights[d], L, device, streams.stream(d));
        });
      }
    }
    streams.join();
  }
}

template <typename T>
void gated_backward_step(const RnnSizes& s, int64_t d, int64_t i, const GatedWeights<T>& w,
                         const GatedLayer<T>& L, c10::Device device, cudaStream_t stream) {
  const int64_t H = s.H, P = s.P, GH = s.G * s.H;
  const int64_t ldY = s.D * P, ldG = s.D * GH, ldA = s.D * H;
  const bool lstm = s.cell == CellKind::Lstm;
  const StepPlan p = s.plan(d, i);
  const T* Yd = L.Y + d * P;
  const T* Gd = L.gates + d * GH;
  const T* Ad = L.aux + d * H;
  T* dYd = L.dY + d * P;
  const T* h0 = L.h0 + d * s.N * P;
  T* dhx = L.grad_hx + d * s.N * P;
  const T* ghn = block_of(L.grad_h_n, d * s.N * P);
  T* dGWd = L.dGW + d * GH;
  T* dGRd = (lstm ? L.dGW : L.dGR) + d * GH;

  GatedBackwardParams<cu_t<T>> q;
  q.rows = p.rows;
  q.H = H;
  q.P = P;
  q.gates = cu(Gd + p.offset * ldG);
  q.ld_gates = ldG;
  q.aux = cu(Ad + p.offset * ldA);
  q.ld_aux = ldA;
  q.prev_split = p.split;
  if (lstm) {  // c_prev
    q.prev_a = cu(Ad + p.prev_offset * ldA);
    q.ld_prev_a = ldA;
    q.prev_b = cu(L.c0 + d * s.N * H);
    q.ld_prev_b = H;
    q.carry_c = cu(L.grad_cx + d * s.N * H);
    q.grad_c_n = cu(block_of(L.grad_c_n, d * s.N * H));
  } else {  // h_prev
    q.prev_a = cu(Yd + p.prev_offset * ldY);
    q.ld_prev_a = ldY;
    q.prev_b = cu(h0);
    q.ld_prev_b = P;
  }
  q.dy = cu(dYd + p.offset * ldY);
  q.ld_dy = ldY;
  q.carry_h = cu(dhx);
  q.grad_h_n = cu(ghn);
  q.end_begin = p.end_begin;
  q.end_end = p.end_end;
  q.dgw = cu(dGWd + p.offset * ldG);
  q.ld_dgw = ldG;
  if (!lstm) {
    q.dgr = cu(dGRd + p.offset * ldG);
    q.ld_dgr = ldG;
  }
  q.h_prev = cu(L.H_prev + d * s.rows * P + p.offset * P);
  q.ld_h_prev = P;
  q.h_prev_a = cu(Yd + p.prev_offset * ldY);
  q.ld_h_prev_a = ldY;
  q.h_prev_b = cu(h0);
  q.ld_h_prev_b = P;
  if (s.has_proj) {
    // dh = dY + carried (P wide), then the gradient of m: dm = dh W_hr.
    T* dM = L.dM + d * s.N * H;
    C10_CUDA_CHECK(add_carried_grad(p.rows, P, cu(dYd + p.offset * ldY), ldY,
                                    cu(static_cast<const T*>(dhx)), cu(ghn), p.end_begin,
                                    p.end_end, stream));
    gemm<T>(false, false, p.rows, H, P, dYd + p.offset * ldY, ldY, w.w_hr, H, false, dM, H,
            device);
    q.dm = cu(static_cast<const T*>(dM));
    q.ld_dm = H;
    q.m = cu(L.m + d * s.rows * H + p.offset * H);
    q.ld_m = H;
  }
  C10_CUDA_CHECK(lstm ? lstm_backward_step(q, stream) : gru_backward_step(q, stream));
  // The gradient carried to the step before: dG_R W_hh (the GRU kernel wrote its direct
  // carry dh z into these rows: accumulate onto it).
  gemm<T>(false, false, p.rows, P, GH, dGRd + p.offset * ldG, ldG, w.w_hh, P, !lstm, dhx, P,
          device);
}

template <typename T>
void gated_backward_impl(const RnnSizes& s, const at::Tensor& x2d,
                         const std::vector<at::Tensor>& hx, const std::vector<at::Tensor>& w,
                         const std::optional<at::Tensor>& masks, const at::Tensor& out2d,
                         const std::vector<at::Tensor>& workspace, at::Tensor dY,
                         const std::vector<at::Tensor>& grad_h_n, const at::Tensor& grad_x2d,
                         const std::vector<at::Tensor>& grad_hx,
                         const std::vector<at::Tensor>& grad_weights) {
  using acc_t = acc_type<cu_t<T>>;
  const c10::Device device = x2d.device();
  const int64_t H = s.H, P = s.P, GH = s.G * s.H, ldG = s.D * GH;
  const bool lstm = s.cell == CellKind::Lstm;
  const auto opts = x2d.options();
  DirectionStreams streams(s.D, device.index());
  // Whole-sequence buffers of one layer (both directions): the gate gradients, the h
  // each row started from, and m (proj_size), for the weight GEMMs after the time loop.
  const at::Tensor dGW = at::empty({s.rows, ldG}, opts);
  const at::Tensor dGR = lstm ? at::Tensor() : at::empty({s.rows, ldG}, opts);
  const at::Tensor H_prev = at::empty({s.D, s.rows, P}, opts);
  const at::Tensor M = s.has_proj ? at::empty({s.D, s.rows, H}, opts) : at::Tensor();
  const at::Tensor dM = s.has_proj ? at::empty({s.D, s.N, H}, opts) : at::Tensor();
  const int64_t ws_elems = column_sum_workspace_elems(s.rows, GH);
  const at::Tensor sum_ws =
      at::empty({s.D, ws_elems},
                opts.dtype(std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat));

  for (int64_t layer = s.NL - 1; layer >= 0; --layer) {
    const at::Tensor X = layer_input(layer, x2d, workspace[0], masks).contiguous();
    const at::Tensor Y = layer + 1 == s.NL ? out2d : workspace[0][layer];
    const int64_t I_l = s.layer_input_size(layer);
    const at::Tensor dX = layer == 0 ? grad_x2d : at::empty({s.rows, I_l}, opts);
    GatedLayer<T> L;
    L.h0 = hx[0].const_data_ptr<T>() + layer * s.D * s.N * P;
    L.grad_hx = grad_hx[0].mutable_data_ptr<T>() + layer * s.D * s.N * P;
    L.grad_h_n = block_of(grad_h_n[0].defined() ? grad_h_n[0].const_data_ptr<T>() : nullptr,
                          layer * s.D * s.N * P);
    if (lstm) {
      L.c0 = hx[1].const_data_ptr<T>() + layer * s.D * s.N * H;
      L.grad_cx = grad_hx[1].mutable_data_ptr<T>() + layer * s.D * s.N * H;
      L.grad_c_n = block_of(grad_h_n[1].defined() ? grad_h_n[1].const_data_ptr<T>() : nullptr,
                            layer * s.D * s.N * H);
    }
    // Read only in the backward.
    L.Y = const_cast<T*>(Y.const_data_ptr<T>());
    L.gates = const_cast<T*>(workspace[1][layer].const_data_ptr<T>());
    L.aux = const_cast<T*>(workspace[2][layer].const_data_ptr<T>());
    L.dY = dY.mutable_data_ptr<T>();
    L.dGW = dGW.mutable_data_ptr<T>();
    L.dGR = lstm ? nullptr : dGR.mutable_data_ptr<T>();
    L.H_prev = H_prev.mutable_data_ptr<T>();
    L.m = s.has_proj ? M.mutable_data_ptr<T>() : nullptr;
    L.dM = s.has_proj ? dM.mutable_data_ptr<T>() : nullptr;
    GatedWeights<T> weights[2];
    for (const auto d : c10::irange(s.D)) weights[d] = gated_weights<T>(s, w, layer, d);

    streams.fork();
    for (int64_t i = s.T - 1; i >= 0; --i) {
      for (const auto d : c10::irange(s.D)) {
        streams.run(d, [&] {
          gated_backward_step<T>(s, d, i, weights[d], L, device, streams.stream(d));
        });
      }
    }
    // Weight and bias gradients of each direction, on its own stream: single GEMMs
    // and column sums over all rows (K = rows).
    for (const auto d : c10::irange(s.D)) {
      streams.run(d, [&] {
        const T* dGWd = L.dGW + d * GH;
        const T* dGRd = (lstm ? L.dGW : L.dGR) + d * GH;
        const cudaStream_t stream = streams.stream(d);
        gemm<T>(true, false, GH, I_l, s.rows, dGWd, ldG, X.const_data_ptr<T>(), I_l, false,
                grad_weights[s.weight_index(layer, d, 0)].mutable_data_ptr<T>(), I_l, device);
        gemm<T>(true, false, GH, P, s.rows, dGRd, ldG, L.H_prev + d * s.rows * P, P, false,
                grad_weights[s.weight_index(layer, d, 1)].mutable_data_ptr<T>(), P, device);
        if (s.has_biases) {
          // LSTM: dG_R == dG_W, so b_hh's gradient is b_ih's (out2). Both sums of a
          // direction run on its stream, one after the other, on its workspace block.
          acc_t* ws = sum_ws.mutable_data_ptr<acc_t>() + d * ws_elems;
          T* db_ih = grad_weights[s.weight_index(layer, d, 2)].mutable_data_ptr<T>();
          T* db_hh = grad_weights[s.weight_index(layer, d, 3)].mutable_data_ptr<T>();
          C10_CUDA_CHECK(column_sum(cu(dGWd), s.rows, GH, ldG, cu(db_ih),
                                    lstm ? cu(db_hh) : static_cast<cu_t<T>*>(nullptr), ws,
                                    stream));
          if (!lstm) {
            C10_CUDA_CHECK(column_sum(cu(dGRd), s.rows, GH, ldG, cu(db_hh),
                                      static_cast<cu_t<T>*>(nullptr), ws, stream));
          }
        }
        if (s.has_proj)
          gemm<T>(true, false, P, H, s.rows, L.dY + d * P, s.D * P, L.m + d * s.rows * H, H,
                  false, grad_weights[s.w_hr_index(layer, d)].mutable_data_ptr<T>(), H, device);
      });
    }
    streams.join();

    const at::Tensor W = stacked_w_ih(s, w, layer);
    gemm<T>(false, false, s.rows, I_l, ldG, L.dGW, ldG, W.const_data_ptr<T>(), I_l, false,
            dX.mutable_data_ptr<T>(), I_l, device);
    if (layer > 0) {
      // The layer below's output gradient; dropout's backward is the same mask.
      if (masks.has_value() && masks->defined()) dX.mul_((*masks)[layer - 1]);
      dY = dX;
    }
  }
}

// ---------------------------------------------------------------------------
// Op entry points
// ---------------------------------------------------------------------------

#define RNNFAST_DISPATCH_CUDA_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> rnn_forward_cuda(
    const at::Tensor& input, at::TensorList hx, at::TensorList weights,
    const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& dropout_masks,
    c10::string_view mode, bool has_biases, int64_t num_layers, int64_t proj_size,
    bool bidirectional, bool train) {
  const char* op = "rnnfast.rnn_forward";
  const RnnSizes s = check_rnn_args(op, input, hx, weights, batch_sizes, dropout_masks, mode,
                                    has_biases, num_layers, proj_size, bidirectional, train);
  TORCH_INTERNAL_ASSERT(input.is_cuda());
  const c10::cuda::CUDAGuard guard(input.device());
  ForwardOutputs out = allocate_forward_outputs(s, input);
  if (nothing_to_compute(s)) return {out.output, out.h_n, out.workspace};
  const at::Tensor x2d = input.contiguous().view({s.rows, s.I});
  const auto w = contiguous_all(weights);
  if (!is_elman(s.cell)) {
    const auto hx_c = contiguous_all(hx);
    RNNFAST_DISPATCH_CUDA_TYPES(input.scalar_type(), "rnn_forward_cuda", [&] {
      gated_forward_impl<scalar_t>(s, x2d, hx_c, w, dropout_masks,
                                   out.output.view({s.rows, s.D * s.P}), out.h_n,
                                   out.workspace);
    });
    return {out.output, out.h_n, out.workspace};
  }
  const at::Tensor hx_c = hx[0].contiguous();
  RNNFAST_DISPATCH_CUDA_TYPES(input.scalar_type(), "rnn_forward_cuda", [&] {
    forward_impl<scalar_t>(s, x2d, hx_c, w, dropout_masks, out.output.view({s.rows, s.D * s.H}),
                           out.h_n[0], out.workspace[0]);
  });
  return {out.output, out.h_n, out.workspace};
}

// Every gradient; rnn_backward_cuda below applies the output mask.
BackwardOutputs rnn_backward_cuda_all(
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
  TORCH_INTERNAL_ASSERT(input.is_cuda());
  const c10::cuda::CUDAGuard guard(input.device());

  BackwardOutputs out = allocate_backward_outputs(s, input, hx, weights);
  if (nothing_to_compute(s)) return out;
  at::Tensor dZ = initial_output_grad(s, grad_output, input);
  if (!is_elman(s.cell)) {
    std::vector<at::Tensor> ghn;
    for (const auto k : c10::irange(s.states())) {
      const at::Tensor g = value_or_undefined(grad_h_n.get(k));
      ghn.push_back(g.defined() ? g.contiguous() : at::Tensor());
    }
    const at::Tensor x2d = input.contiguous().view({s.rows, s.I});
    const auto w = contiguous_all(weights);
    const auto hx_c = contiguous_all(hx);
    const auto ws = contiguous_all(workspace);
    RNNFAST_DISPATCH_CUDA_TYPES(input.scalar_type(), "rnn_backward_cuda", [&] {
      gated_backward_impl<scalar_t>(s, x2d, hx_c, w, dropout_masks,
                                    output.contiguous().view({s.rows, s.D * s.P}), ws, dZ, ghn,
                                    out.grad_input.view({s.rows, s.I}), out.grad_hx,
                                    out.grad_weights);
    });
    return out;
  }
  const at::Tensor g = value_or_undefined(grad_h_n.get(0));
  const at::Tensor ghn = g.defined() ? g.contiguous() : at::Tensor();
  const at::Tensor x2d = input.contiguous().view({s.rows, s.I});
  const auto w = contiguous_all(weights);
  RNNFAST_DISPATCH_CUDA_TYPES(input.scalar_type(), "rnn_backward_cuda", [&] {
    backward_impl<scalar_t>(s, x2d, hx[0].contiguous(), w, dropout_masks,
                            output.contiguous().view({s.rows, s.D * s.H}),
                            workspace[0].contiguous(), dZ, ghn,
                            out.grad_input.view({s.rows, s.I}), out.grad_hx[0],
                            out.grad_weights);
  });
  return out;
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> rnn_backward_cuda(
    const std::optional<at::Tensor>& grad_output,
    const c10::List<std::optional<at::Tensor>>& grad_h_n, const at::Tensor& input,
    at::TensorList hx, at::TensorList weights, const std::optional<at::Tensor>& batch_sizes,
    const std::optional<at::Tensor>& dropout_masks, const at::Tensor& output,
    at::TensorList workspace, c10::string_view mode, bool has_biases, int64_t num_layers,
    int64_t proj_size, bool bidirectional, std::array<bool, 2> output_mask) {
  return masked(rnn_backward_cuda_all(grad_output, grad_h_n, input, hx, weights, batch_sizes,
                                      dropout_masks, output, workspace, mode, has_biases,
                                      num_layers, proj_size, bidirectional),
                output_mask);
}

at::Tensor rnn_cell_forward_cuda(const at::Tensor& input, const at::Tensor& hx,
                                 const at::Tensor& w_ih, const at::Tensor& w_hh,
                                 const std::optional<at::Tensor>& b_ih,
                                 const std::optional<at::Tensor>& b_hh,
                                 c10::string_view nonlinearity) {
  const char* op = "rnnfast.rnn_cell_forward";
  const CellSizes s = check_cell_args(op, input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity);
  TORCH_INTERNAL_ASSERT(input.is_cuda());
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor h = at::empty({s.N, s.H}, input.options());
  if (s.N == 0 || s.H == 0) return h;
  const at::Tensor x = input.contiguous(), h0 = hx.contiguous();
  const at::Tensor wi = w_ih.contiguous(), wh = w_hh.contiguous();
  const at::Tensor bi = s.has_bias ? b_ih->contiguous() : at::Tensor();
  const at::Tensor bh = s.has_bias ? b_hh->contiguous() : at::Tensor();
  const c10::Device device = input.device();
  RNNFAST_DISPATCH_CUDA_TYPES(input.scalar_type(), "rnn_cell_forward_cuda", [&] {
    using T = scalar_t;
    T* out = h.mutable_data_ptr<T>();
    gemm<T>(false, true, s.N, s.H, s.I, x.const_data_ptr<T>(), s.I, wi.const_data_ptr<T>(), s.I,
            false, out, s.H, device);
    gemm<T>(false, true, s.N, s.H, s.H, h0.const_data_ptr<T>(), s.H, wh.const_data_ptr<T>(), s.H,
            true, out, s.H, device);
    BiasActParams<cu_t<T>> p;
    p.act = s.act;
    p.rows = s.N;
    p.H = s.H;
    p.b_ih = s.has_bias ? cu(bi.const_data_ptr<T>()) : nullptr;
    p.b_hh = s.has_bias ? cu(bh.const_data_ptr<T>()) : nullptr;
    p.y = cu(out);
    p.ldy = s.H;
    C10_CUDA_CHECK(bias_act_forward(p, c10::cuda::getCurrentCUDAStream().stream()));
  });
  return h;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_cell_backward_cuda(
    const at::Tensor& grad_h, const at::Tensor& input, const at::Tensor& hx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& h, bool has_bias,
    c10::string_view nonlinearity, std::array<bool, 2> output_mask) {
  const char* op = "rnnfast._rnn_cell_backward";
  const CellSizes s = check_cell_args(op, input, hx, w_ih, w_hh, std::nullopt, std::nullopt,
                                      nonlinearity);
  TORCH_CHECK(grad_h.sizes().equals({s.N, s.H}) && grad_h.scalar_type() == input.scalar_type() &&
                  grad_h.device() == input.device(),
              op, ": grad_h must be a ", input.scalar_type(), " tensor of shape [", s.N, ", ",
              s.H, "] on ", input.device(), ", got ", grad_h.scalar_type(), " ", grad_h.sizes(),
              " on ", grad_h.device());
  TORCH_CHECK(h.sizes().equals({s.N, s.H}) && h.scalar_type() == input.scalar_type() &&
                  h.device() == input.device(),
              op, ": h must be a ", input.scalar_type(), " tensor of shape [", s.N, ", ", s.H,
              "] on ", input.device(), ", got ", h.scalar_type(), " ", h.sizes(), " on ",
              h.device());
  TORCH_INTERNAL_ASSERT(input.is_cuda());
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor dz = at::empty({s.N, s.H}, input.options());
  // Undefined (None) where output_mask says nobody wants it.
  at::Tensor gx = output_mask[0] ? at::empty({s.N, s.I}, input.options()) : at::Tensor();
  at::Tensor ghx = output_mask[1] ? at::empty({s.N, s.H}, input.options()) : at::Tensor();
  at::Tensor gwi = at::empty({s.H, s.I}, input.options());
  at::Tensor gwh = at::empty({s.H, s.H}, input.options());
  at::Tensor gb = at::empty({has_bias ? s.H : 0}, input.options());
  const at::Tensor g = grad_h.contiguous(), x = input.contiguous(), h0 = hx.contiguous();
  const at::Tensor hc = h.contiguous(), wi = w_ih.contiguous(), wh = w_hh.contiguous();
  const c10::Device device = input.device();
  RNNFAST_DISPATCH_CUDA_TYPES(input.scalar_type(), "rnn_cell_backward_cuda", [&] {
    using T = scalar_t;
    using acc_t = acc_type<cu_t<T>>;
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    T* dzp = dz.mutable_data_ptr<T>();
    ActGradParams<cu_t<T>> p;
    p.act = s.act;
    p.rows = s.N;
    p.H = s.H;
    p.grad = cu(g.const_data_ptr<T>());
    p.ld_grad = s.H;
    p.dz = cu(dzp);
    p.ld_dz = s.H;
    p.h = cu(hc.const_data_ptr<T>());
    p.ld_h = s.H;
    C10_CUDA_CHECK(act_grad_backward(p, stream));
    if (gx.defined())
      gemm<T>(false, false, s.N, s.I, s.H, dzp, s.H, wi.const_data_ptr<T>(), s.I, false,
              gx.mutable_data_ptr<T>(), s.I, device);
    if (ghx.defined())
      gemm<T>(false, false, s.N, s.H, s.H, dzp, s.H, wh.const_data_ptr<T>(), s.H, false,
              ghx.mutable_data_ptr<T>(), s.H, device);
    gemm<T>(true, false, s.H, s.I, s.N, dzp, s.H, x.const_data_ptr<T>(), s.I, false,
            gwi.mutable_data_ptr<T>(), s.I, device);
    gemm<T>(true, false, s.H, s.H, s.N, dzp, s.H, h0.const_data_ptr<T>(), s.H, false,
            gwh.mutable_data_ptr<T>(), s.H, device);
    if (has_bias && s.H > 0) {
      at::Tensor ws = at::empty({column_sum_workspace_elems(s.N, s.H)},
                                input.options().dtype(std::is_same_v<acc_t, double>
                                                          ? at::kDouble
                                                          : at::kFloat));
      C10_CUDA_CHECK(column_sum(cu(static_cast<const T*>(dzp)), s.N, s.H, s.H,
                                cu(gb.mutable_data_ptr<T>()), static_cast<cu_t<T>*>(nullptr),
                                ws.mutable_data_ptr<acc_t>(), stream));
    }
  });
  return {gx, ghx, gwi, gwh, gb};
}

#undef RNNFAST_DISPATCH_CUDA_TYPES

}  // namespace

TORCH_LIBRARY_IMPL(rnnfast, CUDA, m) {
  m.impl("rnn_forward", &rnn_forward_cuda);
  m.impl("_rnn_backward", &rnn_backward_cuda);
  m.impl("rnn_cell_forward", &rnn_cell_forward_cuda);
  m.impl("_rnn_cell_backward", &rnn_cell_backward_cuda);
}

}  // namespace rnnfast::cuda
