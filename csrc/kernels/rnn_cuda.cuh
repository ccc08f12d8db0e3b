// Framework-free CUDA core of rnnfast: the pointwise and reduction kernels of the
// Elman RNN, behind launchers that take raw pointers, sizes, row strides and a
// cudaStream_t. Implemented in csrc/cuda/*.cu, which need only the CUDA toolkit;
// the GEMMs and the torch glue live in csrc/cuda/rnn_cuda.cpp.
//
// Layout (as in the CPU kernels): a sequence is a time-major 2-D matrix whose step
// t owns `rows` consecutive rows; every matrix argument is row-major with the row
// stride given next to it (ld*), so a direction's column block of the (rows, D*H)
// layer output is addressed as (pointer + d*H, ld = D*H).
//
// T is the storage type: float, double, __half or __nv_bfloat16. Arithmetic is done
// in acc_type<T> (float for the 16-bit types, else T). Every launcher only enqueues
// work on `stream` and returns cudaGetLastError() (never synchronizes).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "activations.h"

namespace rnnfast::cuda {

// Arithmetic type of a storage type: float for float/__half/__nv_bfloat16, double for double.
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_type = typename AccType<T>::type;

// Forward, one step of one direction, after the recurrent GEMM has added
// h_prev @ W_hh^T into the step's pre-activations:
//   y[j, c]   = act(y[j, c] + b_ih[c] + b_hh[c])      j < rows, c < H (in place)
//   h_n[j, c] = y[j, c]                               rows j >= hn_start, if h_n
// Also the whole rnn_cell_forward pointwise stage (h_n == nullptr).
template <typename T>
struct BiasActParams {
  Activation act = Activation::Tanh;
  int64_t rows = 0;  // live batch rows of the step
  int64_t H = 0;     // hidden size
  const T* b_ih = nullptr;  // (H) or nullptr: no bias (then b_hh is nullptr too)
  const T* b_hh = nullptr;  // (H) or nullptr
  T* y = nullptr;           // (rows, H), row stride ldy: pre-activation in, h out
  int64_t ldy = 0;
  T* h_n = nullptr;         // (rows, H), row stride ldhn, or nullptr
  int64_t ldhn = 0;
  int64_t hn_start = 0;     // first row whose sequence ends at this step
};

// Backward, one step of one direction (BPTT), before the GEMM that carries the
// gradient to the previous step:
//   g          = grad[j, c] + (j >= ghn_start ? grad_h_n[j, c] : 0)
//   dz[j, c]   = g * act'(h[j, c])                    j < rows, c < H
//   h_prev[j, c] = j < prev_split ? prev_a[j, c] : prev_b[j, c]      if h_prev
// grad and dz may alias (in place). The h_prev gather materializes the hidden state
// each row of the step started from, for the single dW_hh GEMM after the loop.
template <typename T>
struct ActGradParams {
  Activation act = Activation::Tanh;
  int64_t rows = 0;
  int64_t H = 0;
  const T* grad = nullptr;  // (rows, H): dL/dh of the step (output grad + carried grad)
  int64_t ld_grad = 0;
  T* dz = nullptr;          // (rows, H): dL/d(pre-activation), may alias grad
  int64_t ld_dz = 0;
  const T* h = nullptr;     // (rows, H): the step's activation output
  int64_t ld_h = 0;
  const T* grad_h_n = nullptr;  // (rows, H) or nullptr: dL/dh_n rows of this direction
  int64_t ld_grad_h_n = 0;
  int64_t ghn_start = 0;        // rows j >= ghn_start end at this step
  T* h_prev = nullptr;          // (rows, H) or nullptr: gather destination
  int64_t ld_h_prev = 0;
  const T* prev_a = nullptr;    // rows j < prev_split read prev_a[j]
  int64_t ld_prev_a = 0;
  const T* prev_b = nullptr;    // rows j >= prev_split read prev_b[j] (indexed by j too)
  int64_t ld_prev_b = 0;
  int64_t prev_split = 0;
};

template <typename T>
cudaError_t bias_act_forward(const BiasActParams<T>& p, cudaStream_t stream);

template <typename T>
cudaError_t act_grad_backward(const ActGradParams<T>& p, cudaStream_t stream);

// Deterministic column sums (the bias gradients): out[c] = sum_r src[r, c] for
// c < cols, accumulated in acc_type<T> in a fixed order that depends only on `rows`
// (no atomics), so repeated runs are bitwise identical. Written to out and, when not
// nullptr, also to out2 (b_ih and b_hh share their gradient). `workspace` holds
// column_sum_workspace_elems(rows, cols) elements of acc_type<T> (float, or double
// for double).
inline int64_t column_sum_rows_per_chunk(int64_t rows) {
  constexpr int64_t kMinRowsPerChunk = 256, kMaxChunks = 1024;
  const int64_t per = (rows + kMaxChunks - 1) / kMaxChunks;
  return per > kMinRowsPerChunk ? per : kMinRowsPerChunk;
}
inline int64_t column_sum_chunks(int64_t rows) {
  const int64_t per = column_sum_rows_per_chunk(rows);
  return (rows + per - 1) / per;
}
inline int64_t column_sum_workspace_elems(int64_t rows, int64_t cols) {
  return column_sum_chunks(rows) * cols;
}

template <typename T>
cudaError_t column_sum(const T* src, int64_t rows, int64_t cols, int64_t ld, T* out, T* out2,
                       acc_type<T>* workspace, cudaStream_t stream);

}  // namespace rnnfast::cuda
