// Fused pointwise kernels of the gated cells (LSTM, GRU) on the CUDA per-step path:
// one kernel per step and direction after the recurrent GEMM (forward) or before the
// GEMM that carries the gradient to the previous step (backward), plus the two small
// helpers of the schedule (carried gradient of a projected LSTM, h_n rows). The cell
// math is kernels/cells.h's (Lstm, Gru), evaluated in acc_type<T> with the scalar
// policy DeviceOps. API and layout: kernels/rnn_cuda.cuh.
#include "../kernels/cells.h"
#include "../kernels/cuda_math.cuh"
#include "../kernels/rnn_cuda.cuh"

namespace rnnfast::cuda {
namespace {

RNNFAST_HOST_DEVICE float exp_of(float x) { return expf(x); }
RNNFAST_HOST_DEVICE double exp_of(double x) { return exp(x); }
RNNFAST_HOST_DEVICE float tanh_of(float x) { return tanhf(x); }
RNNFAST_HOST_DEVICE double tanh_of(double x) { return tanh(x); }

// cells.h's Ops policy for one scalar of type A (float or double).
template <typename A>
struct DeviceOps {
  RNNFAST_HOST_DEVICE static A sigmoid(A x) { return A(1) / (A(1) + exp_of(-x)); }
  RNNFAST_HOST_DEVICE static A tanh(A x) { return tanh_of(x); }
};

// Thread (blockIdx.y * kBlockRows + threadIdx.y, blockIdx.x * kBlockCols + threadIdx.x)
// owns (row, unit); rows stride by the grid's height.
__device__ __forceinline__ int64_t thread_col() {
  return static_cast<int64_t>(blockIdx.x) * kBlockCols + threadIdx.x;
}
__device__ __forceinline__ int64_t first_row() {
  return static_cast<int64_t>(blockIdx.y) * kBlockRows + threadIdx.y;
}
__device__ __forceinline__ int64_t row_stride() {
  return static_cast<int64_t>(gridDim.y) * kBlockRows;
}

// The state row j started from: the previous step's row (j < split) or the initial state's.
template <typename T>
__device__ __forceinline__ const T* prev_row(const T* a, int64_t ld_a, const T* b, int64_t ld_b,
                                             int64_t split, int64_t j) {
  return j < split ? a + j * ld_a : b + j * ld_b;
}

// ---------------------------------------------------------------------------
// CUDA kernels
// ---------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kBlockCols* kBlockRows)
    lstm_forward_kernel(const GatedForwardParams<T> p) {
  using A = acc_type<T>;
  const int64_t u = thread_col(), H = p.H;
  if (u >= H) return;
  // b_ih + b_hh summed first, as the CPU kernels do.
  A bias[4];
#pragma unroll
  for (int k = 0; k < 4; ++k)
    bias[k] = p.b_ih != nullptr ? to_acc(p.b_ih[k * H + u]) + to_acc(p.b_hh[k * H + u]) : A(0);
#pragma unroll 1
  for (int64_t j = first_row(); j < p.rows; j += row_stride()) {
    T* gates = p.gates + j * p.ld_gates;
    const T* rec = p.rec + j * p.ld_rec;
    A g[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) g[k] = to_acc(gates[k * H + u]) + to_acc(rec[k * H + u]) + bias[k];
    const A c_prev = to_acc(prev_row(p.prev_a, p.ld_prev_a, p.prev_b, p.ld_prev_b,
                                     p.prev_split, j)[u]);
    A c, m;
    Lstm::forward<A, DeviceOps<A>>(g[0], g[1], g[2], g[3], c_prev, c, m);
#pragma unroll
    for (int k = 0; k < 4; ++k) gates[k * H + u] = from_acc<T>(g[k]);
    const T c_stored = from_acc<T>(c);
    p.aux[j * p.ld_aux + u] = c_stored;
    p.out[j * p.ld_out + u] = from_acc<T>(m);
    if (p.state_n != nullptr && j >= p.n_begin && j < p.n_end) p.state_n[j * H + u] = c_stored;
  }
}

template <typename T>
__global__ void __launch_bounds__(kBlockCols* kBlockRows)
    gru_forward_kernel(const GatedForwardParams<T> p) {
  using A = acc_type<T>;
  const int64_t u = thread_col(), H = p.H;
  if (u >= H) return;
  A b_ih[3], b_hh[3];
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    b_ih[k] = p.b_ih != nullptr ? to_acc(p.b_ih[k * H + u]) : A(0);
    b_hh[k] = p.b_hh != nullptr ? to_acc(p.b_hh[k * H + u]) : A(0);
  }
#pragma unroll 1
  for (int64_t j = first_row(); j < p.rows; j += row_stride()) {
    T* gates = p.gates + j * p.ld_gates;
    const T* rec = p.rec + j * p.ld_rec;
    // Summed as the CPU kernels do: (x side + b_ih) + (h side + b_hh).
    A r = (to_acc(gates[u]) + b_ih[0]) + (to_acc(rec[u]) + b_hh[0]);
    A z = (to_acc(gates[H + u]) + b_ih[1]) + (to_acc(rec[H + u]) + b_hh[1]);
    A n = to_acc(gates[2 * H + u]) + b_ih[2];
    const A hn = to_acc(rec[2 * H + u]) + b_hh[2];
    const A h_prev = to_acc(prev_row(p.prev_a, p.ld_prev_a, p.prev_b, p.ld_prev_b,
                                     p.prev_split, j)[u]);
    A h;
    Gru::forward<A, DeviceOps<A>>(r, z, n, hn, h_prev, h);
    gates[u] = from_acc<T>(r);
    gates[H + u] = from_acc<T>(z);
    gates[2 * H + u] = from_acc<T>(n);
    p.aux[j * p.ld_aux + u] = from_acc<T>(hn);
    p.out[j * p.ld_out + u] = from_acc<T>(h);
  }
}

// dh of row j, unit u (P == H here): dy + grad_h_n (rows ending here) or the carried
// gradient; written back into dy.
template <typename T>
__device__ __forceinline__ acc_type<T> step_dh(const GatedBackwardParams<T>& p, int64_t j,
                                               int64_t u, bool ends) {
  using A = acc_type<T>;
  T* dy = p.dy + j * p.ld_dy + u;
  A dh = to_acc(*dy);
  if (!ends) {
    dh += to_acc(p.carry_h[j * p.P + u]);
  } else if (p.grad_h_n != nullptr) {
    dh += to_acc(p.grad_h_n[j * p.P + u]);
  }
  *dy = from_acc<T>(dh);
  return dh;
}

template <typename T>
__global__ void __launch_bounds__(kBlockCols* kBlockRows)
    lstm_backward_kernel(const GatedBackwardParams<T> p) {
  using A = acc_type<T>;
  const int64_t u = thread_col(), H = p.H;
  if (u >= H) return;
#pragma unroll 1
  for (int64_t j = first_row(); j < p.rows; j += row_stride()) {
    const bool ends = j >= p.end_begin && j < p.end_end;
    const A dm = p.dm != nullptr ? to_acc(p.dm[j * p.ld_dm + u]) : step_dh(p, j, u, ends);
    A dc = A(0);
    if (!ends) {
      dc = to_acc(p.carry_c[j * H + u]);
    } else if (p.grad_c_n != nullptr) {
      dc = to_acc(p.grad_c_n[j * H + u]);
    }
    const T* saved = p.gates + j * p.ld_gates;
    A g[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) g[k] = to_acc(saved[k * H + u]);
    const A c = to_acc(p.aux[j * p.ld_aux + u]);
    const A c_prev = to_acc(prev_row(p.prev_a, p.ld_prev_a, p.prev_b, p.ld_prev_b,
                                     p.prev_split, j)[u]);
    // m, the projection's input, for dW_hr = dH^T M (recomputed, not saved).
    if (p.m != nullptr) p.m[j * p.ld_m + u] = from_acc<T>(g[3] * DeviceOps<A>::tanh(c));
    A dc_prev;
    Lstm::backward<A, DeviceOps<A>>(g[0], g[1], g[2], g[3], c, c_prev, dm, dc, dc_prev);
    T* dgw = p.dgw + j * p.ld_dgw;
#pragma unroll
    for (int k = 0; k < 4; ++k) dgw[k * H + u] = from_acc<T>(g[k]);
    p.carry_c[j * H + u] = from_acc<T>(dc_prev);
    // h (P <= H wide) each row started from, for dW_hh.
    if (u < p.P)
      p.h_prev[j * p.ld_h_prev + u] = prev_row(p.h_prev_a, p.ld_h_prev_a, p.h_prev_b,
                                               p.ld_h_prev_b, p.prev_split, j)[u];
  }
}

template <typename T>
__global__ void __launch_bounds__(kBlockCols* kBlockRows)
    gru_backward_kernel(const GatedBackwardParams<T> p) {
  using A = acc_type<T>;
  const int64_t u = thread_col(), H = p.H;
  if (u >= H) return;
#pragma unroll 1
  for (int64_t j = first_row(); j < p.rows; j += row_stride()) {
    const bool ends = j >= p.end_begin && j < p.end_end;
    // Read before this thread overwrites carry_h[j, u] with the direct carry below.
    const A dh = step_dh(p, j, u, ends);
    const T* saved = p.gates + j * p.ld_gates;
    A r = to_acc(saved[u]), z = to_acc(saved[H + u]), n = to_acc(saved[2 * H + u]);
    const A hn = to_acc(p.aux[j * p.ld_aux + u]);
    const T h_prev_stored =
        prev_row(p.prev_a, p.ld_prev_a, p.prev_b, p.ld_prev_b, p.prev_split, j)[u];
    A dn_rec, dh_prev;
    Gru::backward<A, DeviceOps<A>>(r, z, n, hn, to_acc(h_prev_stored), dh, dn_rec, dh_prev);
    T* dgw = p.dgw + j * p.ld_dgw;
    T* dgr = p.dgr + j * p.ld_dgr;
    const T dr = from_acc<T>(r), dz = from_acc<T>(z);
    dgw[u] = dr;
    dgw[H + u] = dz;
    dgw[2 * H + u] = from_acc<T>(n);
    dgr[u] = dr;
    dgr[H + u] = dz;
    dgr[2 * H + u] = from_acc<T>(dn_rec);
    p.carry_h[j * p.P + u] = from_acc<T>(dh_prev);
    p.h_prev[j * p.ld_h_prev + u] = h_prev_stored;
  }
}

template <typename T>
__global__ void __launch_bounds__(kBlockCols* kBlockRows)
    add_carried_grad_kernel(int64_t rows, int64_t width, T* dy, int64_t ld_dy, const T* carry,
                            const T* grad_n, int64_t end_begin, int64_t end_end) {
  const int64_t c = thread_col();
  if (c >= width) return;
#pragma unroll 1
  for (int64_t j = first_row(); j < rows; j += row_stride()) {
    const bool ends = j >= end_begin && j < end_end;
    const T* add = ends ? (grad_n != nullptr ? grad_n + j * width : nullptr) : carry + j * width;
    if (add != nullptr) {
      T* d = dy + j * ld_dy + c;
      *d = from_acc<T>(to_acc(*d) + to_acc(add[c]));
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kBlockCols* kBlockRows)
    copy_rows_kernel(const T* src, int64_t ld_src, T* dst, int64_t ld_dst, int64_t rows,
                     int64_t width) {
  const int64_t c = thread_col();
  if (c >= width) return;
#pragma unroll 1
  for (int64_t j = first_row(); j < rows; j += row_stride()) dst[j * ld_dst + c] = src[j * ld_src + c];
}

}  // namespace

// ---------------------------------------------------------------------------
// Kernel launchers
// ---------------------------------------------------------------------------

template <typename T>
cudaError_t lstm_forward_step(const GatedForwardParams<T>& p, cudaStream_t stream) {
  return launch_step(lstm_forward_kernel<T>, p.rows, p.H, stream, p);
}

template <typename T>
cudaError_t gru_forward_step(const GatedForwardParams<T>& p, cudaStream_t stream) {
  return launch_step(gru_forward_kernel<T>, p.rows, p.H, stream, p);
}

template <typename T>
cudaError_t lstm_backward_step(const GatedBackwardParams<T>& p, cudaStream_t stream) {
  return launch_step(lstm_backward_kernel<T>, p.rows, p.H, stream, p);
}

template <typename T>
cudaError_t gru_backward_step(const GatedBackwardParams<T>& p, cudaStream_t stream) {
  return launch_step(gru_backward_kernel<T>, p.rows, p.H, stream, p);
}

template <typename T>
cudaError_t add_carried_grad(int64_t rows, int64_t width, T* dy, int64_t ld_dy, const T* carry,
                             const T* grad_n, int64_t end_begin, int64_t end_end,
                             cudaStream_t stream) {
  return launch_step(add_carried_grad_kernel<T>, rows, width, stream, rows, width, dy, ld_dy,
                     carry, grad_n, end_begin, end_end);
}

template <typename T>
cudaError_t copy_rows(const T* src, int64_t ld_src, T* dst, int64_t ld_dst, int64_t rows,
                      int64_t width, cudaStream_t stream) {
  return launch_step(copy_rows_kernel<T>, rows, width, stream, src, ld_src, dst, ld_dst, rows,
                     width);
}

#define RNNFAST_INSTANTIATE(T)                                                                   \
  template cudaError_t lstm_forward_step<T>(const GatedForwardParams<T>&, cudaStream_t);        \
  template cudaError_t gru_forward_step<T>(const GatedForwardParams<T>&, cudaStream_t);         \
  template cudaError_t lstm_backward_step<T>(const GatedBackwardParams<T>&, cudaStream_t);      \
  template cudaError_t gru_backward_step<T>(const GatedBackwardParams<T>&, cudaStream_t);       \
  template cudaError_t add_carried_grad<T>(int64_t, int64_t, T*, int64_t, const T*, const T*,   \
                                           int64_t, int64_t, cudaStream_t);                     \
  template cudaError_t copy_rows<T>(const T*, int64_t, T*, int64_t, int64_t, int64_t,           \
                                    cudaStream_t);
RNNFAST_INSTANTIATE(float)
RNNFAST_INSTANTIATE(double)
RNNFAST_INSTANTIATE(__half)
RNNFAST_INSTANTIATE(__nv_bfloat16)
#undef RNNFAST_INSTANTIATE

}  // namespace rnnfast::cuda
