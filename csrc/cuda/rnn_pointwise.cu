// Fused pointwise kernels of the rnnfast CUDA path: the one kernel per time step
// that follows the recurrent GEMM, forward (bias + activation + h_n rows) and
// backward (h_n gradient + activation derivative + gather of the previous hidden
// state). Only the CUDA toolkit is needed here; the API is in kernels/rnn_cuda.cuh.
#include <algorithm>

#include "../kernels/activations.h"
#include "../kernels/cuda_math.cuh"
#include "../kernels/rnn_cuda.cuh"

namespace rnnfast::cuda {
namespace {

// The grid: step_grid() in kernels/cuda_math.cuh (launch_step launches on it).

// ---------------------------------------------------------------------------
// CUDA kernels
// ---------------------------------------------------------------------------

template <typename T, Activation A>
__global__ void __launch_bounds__(kBlockCols* kBlockRows)
    bias_act_forward_kernel(const BiasActParams<T> p) {
  using acc_t = acc_type<T>;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kBlockCols + threadIdx.x;
  if (c >= p.H) return;
  // b_ih + b_hh summed first, as the CPU kernels do, so float results agree.
  const acc_t bias = p.b_ih != nullptr ? to_acc(p.b_ih[c]) + to_acc(p.b_hh[c]) : acc_t(0);
  const int64_t row_stride = static_cast<int64_t>(gridDim.y) * kBlockRows;
  // Usually one iteration (the grid covers up to 524k rows); unrolling only costs registers.
#pragma unroll 1
  for (int64_t j = static_cast<int64_t>(blockIdx.y) * kBlockRows + threadIdx.y; j < p.rows;
       j += row_stride) {
    T* y = p.y + j * p.ldy + c;
    const T h = from_acc<T>(activate<acc_t>(A, to_acc(*y) + bias));
    *y = h;
    if (p.h_n != nullptr && j >= p.hn_start) p.h_n[j * p.ldhn + c] = h;
  }
}

template <typename T, Activation A>
__global__ void __launch_bounds__(kBlockCols* kBlockRows)
    act_grad_backward_kernel(const ActGradParams<T> p) {
  using acc_t = acc_type<T>;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kBlockCols + threadIdx.x;
  if (c >= p.H) return;
  const int64_t row_stride = static_cast<int64_t>(gridDim.y) * kBlockRows;
  // Usually one iteration (the grid covers up to 524k rows); unrolling only costs registers.
#pragma unroll 1
  for (int64_t j = static_cast<int64_t>(blockIdx.y) * kBlockRows + threadIdx.y; j < p.rows;
       j += row_stride) {
    acc_t g = to_acc(p.grad[j * p.ld_grad + c]);
    if (p.grad_h_n != nullptr && j >= p.ghn_start) g += to_acc(p.grad_h_n[j * p.ld_grad_h_n + c]);
    const acc_t h = to_acc(p.h[j * p.ld_h + c]);
    p.dz[j * p.ld_dz + c] = from_acc<T>(apply_activation_grad<acc_t>(A, g, h));
    if (p.h_prev != nullptr) {
      const T* src = j < p.prev_split ? p.prev_a + j * p.ld_prev_a : p.prev_b + j * p.ld_prev_b;
      p.h_prev[j * p.ld_h_prev + c] = src[c];
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// Kernel launchers
// ---------------------------------------------------------------------------

template <typename T>
cudaError_t bias_act_forward(const BiasActParams<T>& p, cudaStream_t stream) {
  return p.act == Activation::Tanh
             ? launch_step(bias_act_forward_kernel<T, Activation::Tanh>, p.rows, p.H, stream, p)
             : launch_step(bias_act_forward_kernel<T, Activation::Relu>, p.rows, p.H, stream, p);
}

template <typename T>
cudaError_t act_grad_backward(const ActGradParams<T>& p, cudaStream_t stream) {
  return p.act == Activation::Tanh
             ? launch_step(act_grad_backward_kernel<T, Activation::Tanh>, p.rows, p.H, stream, p)
             : launch_step(act_grad_backward_kernel<T, Activation::Relu>, p.rows, p.H, stream, p);
}

#define RNNFAST_INSTANTIATE(T)                                                       \
  template cudaError_t bias_act_forward<T>(const BiasActParams<T>&, cudaStream_t); \
  template cudaError_t act_grad_backward<T>(const ActGradParams<T>&, cudaStream_t);
RNNFAST_INSTANTIATE(float)
RNNFAST_INSTANTIATE(double)
RNNFAST_INSTANTIATE(__half)
RNNFAST_INSTANTIATE(__nv_bfloat16)
#undef RNNFAST_INSTANTIATE

}  // namespace rnnfast::cuda
