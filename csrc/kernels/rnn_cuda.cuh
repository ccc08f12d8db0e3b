// Framework-free CUDA core of rnnfast: the pointwise and reduction kernels of the
// Elman RNN and of the gated cells (LSTM, GRU), behind launchers that take raw
// pointers, sizes, row strides and a cudaStream_t. Implemented in csrc/cuda/*.cu,
// which need only the CUDA toolkit; the GEMMs and the torch glue live in
// csrc/cuda/rnn_cuda.cpp.
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
// Gated cells, per step (csrc/cuda/gated_pointwise.cu)
// ---------------------------------------------------------------------------
//
// The pointwise stage of one step of one direction of an LSTM or GRU layer, around
// the step's cuBLAS GEMMs (rnn_cuda.cpp); the math is kernels/cells.h's, computed in
// acc_type<T>. One thread per (row, hidden unit); every element has one owner (no
// atomics). Row j of the step is batch row j: its state rows in `prev_*` and in the
// (N, width) carried-gradient buffers are indexed by j. The previous state of a row
// comes from the step processed just before for j < prev_split (prev_a[j]), else from
// the initial state (prev_b[j]): StepPlan's split (kernels/cells.h).
//
// Forward, after rec = h_prev W_hh^T:
//   LSTM: gates <- i, f, g, o;  aux <- c;  out <- m = o tanh(c);  state_n[j] <- c
//         for the rows j in [n_begin, n_end) (c_n)
//   GRU:  gates <- r, z, n;     aux <- hn = rec_n + b_hn;  out <- h
// with the pre-activations gates + b_ih + rec + b_hh (gates holds x W_ih^T on entry).
template <typename T>
struct GatedForwardParams {
  int64_t rows = 0;  // live batch rows of the step
  int64_t H = 0;     // hidden size (units); G*H gate columns
  T* gates = nullptr;          // (rows, G*H)
  int64_t ld_gates = 0;
  const T* rec = nullptr;      // (rows, G*H)
  int64_t ld_rec = 0;
  const T* b_ih = nullptr;     // (G*H) or nullptr: no biases (then b_hh is nullptr too)
  const T* b_hh = nullptr;
  const T* prev_a = nullptr;   // LSTM: c_prev; GRU: h_prev (both H wide)
  int64_t ld_prev_a = 0;
  const T* prev_b = nullptr;
  int64_t ld_prev_b = 0;
  int64_t prev_split = 0;
  T* aux = nullptr;            // (rows, H): c or hn
  int64_t ld_aux = 0;
  T* out = nullptr;            // (rows, H): m (LSTM) or h (GRU)
  int64_t ld_out = 0;
  T* state_n = nullptr;        // LSTM: c_n (N, H), row stride H; nullptr: none
  int64_t n_begin = 0, n_end = 0;
};

// Backward (BPTT), before the GEMM carry_h (=/+=) dG_R W_hh:
//   dh = dy[j] + (j in [end_begin, end_end) ? grad_h_n[j] (0 if nullptr) : carry_h[j]),
//        written back into dy (dy becomes dH); with dm given (LSTM with proj_size: the
//        gradient of m, dm = dH W_hr, computed by add_carried_grad and a GEMM) dy and
//        carry_h are not read.
//   LSTM: dc_in = ends ? grad_c_n[j] (0 if nullptr) : carry_c[j];  Lstm::backward
//         -> dG_W (= dG_R) into dgw, carry_c[j] <- dc_prev, m[j] <- o tanh(c) if m.
//   GRU:  Gru::backward -> dG_W into dgw, dG_R into dgr, carry_h[j] <- dh z (the GEMM
//         then accumulates dG_R W_hh onto it).
// Also gathers the h each row started from into h_prev (P wide; for dW_hh): j <
// prev_split from h_prev_a[j], else h_prev_b[j] (LSTM; the GRU's prev_a / prev_b are
// h already, and h_prev_a / h_prev_b are not read).
template <typename T>
struct GatedBackwardParams {
  int64_t rows = 0, H = 0;
  int64_t P = 0;               // width of h (proj_size, or H)
  const T* gates = nullptr;    // (rows, G*H) saved post-activation gates
  int64_t ld_gates = 0;
  const T* aux = nullptr;      // (rows, H) saved c (LSTM) or hn (GRU)
  int64_t ld_aux = 0;
  const T* prev_a = nullptr;   // LSTM: c_prev; GRU: h_prev, split as in the forward
  int64_t ld_prev_a = 0;
  const T* prev_b = nullptr;
  int64_t ld_prev_b = 0;
  int64_t prev_split = 0;
  T* dy = nullptr;             // (rows, P) output gradient in, dh out
  int64_t ld_dy = 0;
  const T* dm = nullptr;       // (rows, H) or nullptr
  int64_t ld_dm = 0;
  T* carry_h = nullptr;        // (N, P)
  const T* grad_h_n = nullptr; // (N, P) or nullptr
  T* carry_c = nullptr;        // LSTM: (N, H)
  const T* grad_c_n = nullptr; // LSTM: (N, H) or nullptr
  int64_t end_begin = 0, end_end = 0;
  T* dgw = nullptr;            // (rows, G*H)
  int64_t ld_dgw = 0;
  T* dgr = nullptr;            // GRU: (rows, G*H)
  int64_t ld_dgr = 0;
  T* m = nullptr;              // LSTM with proj_size: (rows, H), else nullptr
  int64_t ld_m = 0;
  T* h_prev = nullptr;         // (rows, P)
  int64_t ld_h_prev = 0;
  const T* h_prev_a = nullptr;
  int64_t ld_h_prev_a = 0;
  const T* h_prev_b = nullptr;
  int64_t ld_h_prev_b = 0;
};

template <typename T>
cudaError_t lstm_forward_step(const GatedForwardParams<T>& p, cudaStream_t stream);
template <typename T>
cudaError_t gru_forward_step(const GatedForwardParams<T>& p, cudaStream_t stream);
template <typename T>
cudaError_t lstm_backward_step(const GatedBackwardParams<T>& p, cudaStream_t stream);
template <typename T>
cudaError_t gru_backward_step(const GatedBackwardParams<T>& p, cudaStream_t stream);

// dy[j, c] += (j in [end_begin, end_end) ? grad_n[j, c] (0 if nullptr) : carry[j, c]),
// j < rows, c < width: dh of a step whose m-gradient needs a GEMM first (proj_size).
template <typename T>
cudaError_t add_carried_grad(int64_t rows, int64_t width, T* dy, int64_t ld_dy, const T* carry,
                             const T* grad_n, int64_t end_begin, int64_t end_end,
                             cudaStream_t stream);

// dst[j, c] = src[j, c], j < rows, c < width (the h_n rows of a step).
template <typename T>
cudaError_t copy_rows(const T* src, int64_t ld_src, T* dst, int64_t ld_dst, int64_t rows,
                      int64_t width, cudaStream_t stream);

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
