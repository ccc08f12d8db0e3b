// Validation of the rnnfast op arguments and the sizes derived from them.
// Shared by every backend so that bad input gets the same message on CPU and CUDA.
#pragma once

#include <array>

#include <ATen/ATen.h>
#include <c10/util/string_view.h>
#include <atomic>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/activations.h"
#include "kernels/cells.h"

namespace rnnfast {

// Sizes of one rnn_forward / _rnn_backward call.
//   T     number of time steps (L)
//   N     batch size (max batch for packed input)
//   I     input features of layer 0 (H_in)
//   H     hidden size (the width of c for LSTM)
//   G     gates per hidden unit (1 Elman, 4 LSTM, 3 GRU): W_ih is (G*H, I_l), W_hh (G*H, P)
//   P     width of h and of each direction's output: proj_size if > 0 (LSTM), else H
//   D     directions (1 or 2)
//   NL    layers
//   rows  rows of the time-major 2-D view of the input: T*N dense, sum(batch_sizes) packed
struct RnnSizes {
  int64_t T = 0, N = 0, I = 0, H = 0, G = 1, P = 0, D = 1, NL = 1, rows = 0;
  CellKind cell = CellKind::RnnTanh;
  bool packed = false;
  bool has_biases = true;
  bool has_proj = false;
  bool train = true;  // keep what _rnn_backward needs (gated cells' gates and c / hn)
  Activation act = Activation::Tanh;  // Elman only
  // Per step: live batch rows and the row offset of the step in the 2-D view.
  std::vector<int64_t> batch_sizes, offsets;

  // nn.RNNBase's _flat_weights per layer and direction: w_ih, w_hh[, b_ih, b_hh][, w_hr].
  int64_t weights_per_layer() const { return (has_biases ? 4 : 2) + (has_proj ? 1 : 0); }
  int64_t weight_index(int64_t layer, int64_t dir, int64_t k) const {
    return (layer * D + dir) * weights_per_layer() + k;
  }
  int64_t w_hr_index(int64_t layer, int64_t dir) const {
    return weight_index(layer, dir, has_biases ? 4 : 2);
  }
  int64_t layer_input_size(int64_t layer) const { return layer == 0 ? I : D * P; }
  int64_t states() const { return cell_states(cell); }
  StepPlan plan(int64_t d, int64_t i) const {
    return step_plan(T, batch_sizes.data(), offsets.data(), d, i);
  }
};

CellKind parse_mode(c10::string_view mode);
Activation parse_nonlinearity(c10::string_view nonlinearity);

// Checks every argument of rnn_forward and returns the sizes. `op` names the op in messages.
RnnSizes check_rnn_args(const char* op, const at::Tensor& input, at::TensorList hx,
                        at::TensorList weights, const std::optional<at::Tensor>& batch_sizes,
                        const std::optional<at::Tensor>& dropout_masks, c10::string_view mode,
                        bool has_biases, int64_t num_layers, int64_t proj_size,
                        bool bidirectional, bool train);

// Checks the extra arguments of _rnn_backward against the sizes of the forward call.
void check_rnn_backward_args(const RnnSizes& s, const at::Tensor& input,
                             const std::optional<at::Tensor>& grad_output,
                             const c10::List<std::optional<at::Tensor>>& grad_h_n,
                             const at::Tensor& output, at::TensorList workspace);

// The defined tensor of an optional, or an undefined one.
inline at::Tensor value_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? *t : at::Tensor();
}

// Output shapes; they depend only on the sizes, never on the device.
std::vector<int64_t> output_shape(const RnnSizes& s);
// The shape of each workspace entry: [lower-layer outputs] and, for a gated cell
// with s.train, [gates (NL, rows, D*G*H), c or hn (NL, rows, D*H)].
std::vector<std::vector<int64_t>> workspace_shapes(const RnnSizes& s);

// ---------------------------------------------------------------------------
// Glue shared by the backends (everything but the kernels themselves)
// ---------------------------------------------------------------------------

// True when a call has no element to compute (empty batch or H == 0): the
// allocated results below are then returned as they are.
inline bool nothing_to_compute(const RnnSizes& s) { return s.rows == 0 || s.H == 0; }

// The results of the ops as lists (h_n and grad_hx hold one tensor per state).
struct ForwardOutputs {
  at::Tensor output;
  std::vector<at::Tensor> h_n, workspace;
};
struct BackwardOutputs {
  at::Tensor grad_input;
  std::vector<at::Tensor> grad_hx, grad_weights;
};

// _rnn_backward's results under its output_mask (whether grad_input and grad_hx are
// wanted): an unwanted grad_input comes back undefined (None), unwanted grad_hx as an
// empty list.
inline std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> masked(
    BackwardOutputs out, std::array<bool, 2> output_mask) {
  if (!output_mask[0]) out.grad_input = at::Tensor();
  if (!output_mask[1]) out.grad_hx.clear();
  return {std::move(out.grad_input), std::move(out.grad_hx), std::move(out.grad_weights)};
}

// rnn_forward's results, uninitialised; zeros when nothing_to_compute(s).
ForwardOutputs allocate_forward_outputs(const RnnSizes& s, const at::Tensor& input);

// _rnn_backward's results shaped like their arguments, uninitialised; zeros when
// nothing_to_compute(s).
BackwardOutputs allocate_backward_outputs(const RnnSizes& s, const at::Tensor& input,
                                          at::TensorList hx, at::TensorList weights);

// The buffer the backward kernels start from and overwrite in place: a fresh
// contiguous (rows, D*P) copy of grad_output, or zeros when it is undefined; in
// `dtype` when given (kernels that accumulate gradients wider than the input), else
// in input's dtype.
at::Tensor initial_output_grad(const RnnSizes& s, const std::optional<at::Tensor>& grad_output,
                               const at::Tensor& input,
                               std::optional<at::ScalarType> dtype = std::nullopt);

std::vector<at::Tensor> contiguous_all(at::TensorList tensors);

// The input of `layer` as a (rows, H_in or D*P) matrix: x for layer 0, else the layer
// below's output (from `outputs`, workspace[0]) times its dropout mask.
at::Tensor layer_input(int64_t layer, const at::Tensor& x2d, const at::Tensor& outputs,
                       const std::optional<at::Tensor>& masks);

// The CPU kernels this machine runs (defined in cpu/rnn_cpu.cpp).
std::string cpu_kernels();

// Persistent-kernel launches so far (bumped by the CUDA backend, read by the
// rnnfast::_persistent_launches op).
std::atomic<int64_t>& persistent_launch_counter();
int64_t persistent_launches();

// Cell op sizes: N, I, H.
struct CellSizes {
  int64_t N = 0, I = 0, H = 0;
  bool has_bias = true;
  Activation act = Activation::Tanh;
};

CellSizes check_cell_args(const char* op, const at::Tensor& input, const at::Tensor& hx,
                          const at::Tensor& w_ih, const at::Tensor& w_hh,
                          const std::optional<at::Tensor>& b_ih,
                          const std::optional<at::Tensor>& b_hh, c10::string_view nonlinearity);

}  // namespace rnnfast
