// The CPU sequence driver: one for every cell.
//
// Every sequence is a time-major 2-D matrix of `rows` rows; step t owns rows
// [offsets[t], offsets[t] + batch_sizes[t]) (dense input: batch_sizes[t] == N, so
// packed and dense share one path), and direction d owns a column block of every
// buffer. The driver owns what is the same for every cell:
//   - the layer loop and the dropout masks between layers;
//   - the buffers the time loops write (layer outputs, saved gates and c / hn);
//   - the input projection  Gates = X W_ih^T, one GEMM per layer-direction (unless the
//     loops project it themselves, a block of steps at a time: the gated cells on AVX2);
//   - after the backward time loops, the weight, bias and input gradients
//     dW_ih = dG_W^T X, dW_hh = dG_R^T H_prev, [dW_hr = dH^T M], db, dX = dG_W W_ih,
//     one GEMM / reduction each over all rows.
// A cell supplies only its time loops (CellLoops): the per-step recurrent GEMMs, its
// pointwise math (kernels/cells.h), its states and what it saves for backward. The
// Elman loops are in elman_cpu.cpp, the LSTM / GRU loops in gated_cpu.cpp.
#pragma once

#include <array>

#include <ATen/ATen.h>
#include <c10/util/FunctionRef.h>

#include <memory>
#include <optional>
#include <vector>

#include "../rnn_args.h"

namespace rnnfast::cpu {

// One layer as the driver hands it to a cell's time loops.
template <typename T>
struct LayerBuffers {
  int64_t layer = 0;
  const T* X = nullptr;    // (rows, s.layer_input_size(layer)) the layer's input
  T* Y = nullptr;          // (rows, D*P) the layer's output
  // (rows, D*G*H): X W_ih^T (no bias) on entry, unless the loops project the input
  // themselves; the saved gates on exit. The Elman cell's is Y. Null where the loops
  // project the input and nothing is saved (inference).
  T* gates = nullptr;
  T* aux = nullptr;        // (rows, D*H): LSTM's c or GRU's hn; null for Elman
  const T* hx[2] = {};     // this layer's blocks of h0 (D, N, P) [and c0 (D, N, H)]
  T* h_n[2] = {};          // forward: of h_n [and c_n]
  T* dY = nullptr;         // backward: (rows, D*P) the output gradient, overwritten
  const T* grad_h_n[2] = {};  // backward: null where the gradient is None
  T* grad_hx[2] = {};      // backward: written by the time loops
  // backward: false when nobody wants grad_hx; the loops may then skip the products
  // that only it needs (grad_hx still serves them as the carry buffer).
  bool need_grad_hx = true;
};

// The gradients of one direction that a cell's backward hands to the driver.
template <typename T>
struct GateGrads {
  const T* dGW = nullptr;  // (rows, G*H) row stride ldW: for W_ih, b_ih and the input
  int64_t ldW = 0;
  const T* dGR = nullptr;  // for W_hh and b_hh: dGW itself except for GRU's n block
  int64_t ldR = 0;
  const T* h_prev = nullptr;  // (rows, P) the state each row started from
  const T* m = nullptr;    // with proj_size: (rows, H) h before the projection,
  const T* dH = nullptr;   // and the gradient of h (row stride ldH)
  int64_t ldH = 0;
};

// A cell's time loops, for all directions of one layer.
template <typename T>
class CellLoops {
 public:
  virtual ~CellLoops() = default;
  // True where forward computes the input projection X W_ih^T itself, a block of steps
  // at a time (then b.gates holds nothing on entry).
  virtual bool projects_input() const { return false; }
  virtual void forward(const LayerBuffers<T>& b) = 0;
  // Calls tail(d, grads) once direction d's gradients are complete.
  virtual void backward(const LayerBuffers<T>& b,
                        c10::function_ref<void(int64_t, const GateGrads<T>&)> tail) = 0;
};

template <typename T>
std::unique_ptr<CellLoops<T>> make_elman_loops(const RnnSizes& s,
                                               const std::vector<at::Tensor>& weights);
template <typename T>
std::unique_ptr<CellLoops<T>> make_gated_loops(const RnnSizes& s,
                                               const std::vector<at::Tensor>& weights);

// Below this many steps the time loops read the weights where they are instead of packing
// or transposing them first: a cell or a streaming call (T = 1) would spend more on the
// copies than on the products.
inline constexpr int64_t kTransposeMinSteps = 8;

// True where the float32 time loops multiply by W_hh packed in panels once per layer
// (small_gemm.h's packed kernel: AVX2 CPUs without AVX-512), from kTransposeMinSteps steps.
bool pack_step_weights(const RnnSizes& s);

// Below this many steps the gated cells multiply by the weights where they are
// (BLAS with B transposed) instead of first copying the transposes their
// step GEMMs read: a cell (T = 1) would spend more on the copies than on the products.
// (The Elman cell has its own one-step op.)
bool weights_in_place(const RnnSizes& s);

// Forward of all layers (float, double). hx / h_n: one tensor per state; workspace as
// allocate_forward_outputs made it (gates and c / hn only for gated cells with s.train).
template <typename T>
void sequence_forward(const RnnSizes& s, const at::Tensor& x2d, const std::vector<at::Tensor>& hx,
                      const std::vector<at::Tensor>& weights,
                      const std::optional<at::Tensor>& masks, const at::Tensor& out2d,
                      const std::vector<at::Tensor>& h_n,
                      const std::vector<at::Tensor>& workspace);

// BPTT of all layers. dY: the (rows, D*P) output gradient, overwritten; grad_h_n: one
// entry per state, undefined where None. output_mask (_rnn_backward's): where grad_x2d
// or grad_hx is not wanted, what only it needs may be skipped (its contents are then
// unspecified).
template <typename T>
void sequence_backward(const RnnSizes& s, const at::Tensor& x2d,
                       const std::vector<at::Tensor>& hx, const std::vector<at::Tensor>& weights,
                       const std::optional<at::Tensor>& masks, const at::Tensor& out2d,
                       const std::vector<at::Tensor>& workspace, at::Tensor dY,
                       const std::vector<at::Tensor>& grad_h_n, const at::Tensor& grad_x2d,
                       const std::vector<at::Tensor>& grad_hx,
                       const std::vector<at::Tensor>& grad_weights,
                       std::array<bool, 2> output_mask);

}  // namespace rnnfast::cpu
