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

// ---------------------------------------------------------------------------
// Persistent recurrence (csrc/cuda/rnn_persistent.cu)
// ---------------------------------------------------------------------------
//
// Every time step of one layer, both directions, in ONE cooperative launch: each
// block owns kPersistentCols hidden columns of one direction and keeps the matching
// slice of W_hh (forward) or W_hh^T (backward) in registers for the whole sequence.
// Per step a block reads the whole previous state (or gradient) from L2, computes its
// columns, writes them and counts the step on its direction's step counter; the blocks
// of a direction wait for the count (integer atomics, no float atomics) before the
// next step.
// The input projection (forward) and the weight GEMMs (backward) stay outside, as
// single large GEMMs. Sums run in a fixed order: results are bitwise reproducible.
//
// Layout as above: the layer output / gradient is (rows, D*H) row-major; step t owns
// rows offsets[t] .. offsets[t] + batch_sizes[t]; direction d's columns start at d*H.
constexpr int kPersistentCols = 8;          // hidden columns per block
constexpr int kPersistentThreads = 256;     // threads per block; thread i owns k = i + 256j
constexpr int64_t kPersistentMaxRows = 128;  // batch rows (4 outputs per thread)
constexpr int64_t kPersistentMaxH = 2048;    // 8 k per thread (64 weight registers)

constexpr int64_t kPersistentCounterStride = 16;  // 64-bit words between step counters

inline int64_t persistent_blocks_per_direction(int64_t H) {
  return (H + kPersistentCols - 1) / kPersistentCols;
}

// The sequence shared by both kernels. batch_sizes / offsets are device arrays of T
// entries (a packed sequence), or both nullptr: every step has N rows, step t starts
// at row t*N.
struct PersistentSequence {
  Activation act = Activation::Tanh;
  int64_t T = 0, N = 0, H = 0, D = 1;
  const int64_t* batch_sizes = nullptr;
  const int64_t* offsets = nullptr;
  // Direction d's step counter is step_counters[d * kPersistentCounterStride] (own
  // 128-byte line); zeroed before the launch.
  unsigned long long* step_counters = nullptr;
};

// Forward: y holds the input projection of every step (x @ W_ih^T, no bias) on entry
// and the layer output h on return; h_n[d] gets each sequence's final state.
template <typename T>
struct PersistentForwardParams {
  PersistentSequence seq;
  const T* w_hh[2] = {nullptr, nullptr};  // (H, H) per direction
  const T* b_ih[2] = {nullptr, nullptr};  // (H) or nullptr (then b_hh is nullptr too)
  const T* b_hh[2] = {nullptr, nullptr};
  const T* hx[2] = {nullptr, nullptr};    // (N, H) initial state per direction
  T* y = nullptr;                         // (rows, D*H)
  T* h_n[2] = {nullptr, nullptr};         // (N, H)
};

// Backward (BPTT): dz holds dL/d(output) on entry and dL/d(pre-activation) on return;
// also dL/dhx and, for the single dW_hh GEMM after it, the state each row started from.
template <typename T>
struct PersistentBackwardParams {
  PersistentSequence seq;
  const T* w_hh[2] = {nullptr, nullptr};      // (H, H)
  const T* hx[2] = {nullptr, nullptr};        // (N, H)
  const T* y = nullptr;                       // (rows, D*H): the forward output h
  T* dz = nullptr;                            // (rows, D*H)
  const T* grad_h_n[2] = {nullptr, nullptr};  // (N, H) or nullptr (zeros)
  T* grad_hx[2] = {nullptr, nullptr};         // (N, H)
  T* h_prev[2] = {nullptr, nullptr};          // (rows, H)
};

// Dynamic shared memory of one block, in bytes (the per-warp partial sums).
int64_t persistent_shared_bytes(int64_t N);

// How many blocks of the persistent kernels can be resident at once on `device`
// (multiprocessors x blocks per multiprocessor), 0 when the device cannot do
// cooperative launches. A launch needs D * persistent_blocks_per_direction(H) of them.
template <typename T>
cudaError_t persistent_capacity(int64_t N, int64_t H, int device, bool backward, int64_t* blocks);

// Enqueue the whole recurrence on `stream` (a cooperative launch). Preconditions,
// checked by the caller: 1 <= N <= kPersistentMaxRows, 1 <= H <= kPersistentMaxH,
// T >= 1, and the grid fits persistent_capacity().
template <typename T>
cudaError_t persistent_forward(const PersistentForwardParams<T>& p, cudaStream_t stream);
template <typename T>
cudaError_t persistent_backward(const PersistentBackwardParams<T>& p, cudaStream_t stream);

}  // namespace rnnfast::cuda
