// The rnnfast operator library: every schema in one TORCH_LIBRARY block, plus the
// typed C++ entry points of rnnfast.h. Kernels are registered per backend in
// cpu/ and cuda/ with TORCH_LIBRARY_IMPL; fake kernels and autograd from Python,
// except the cell's autograd (autograd.cpp).
#include <torch/library.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/irange.h>

#include "rnn_args.h"
#include "rnnfast.h"

namespace rnnfast {

std::atomic<int64_t>& persistent_launch_counter() {
  static std::atomic<int64_t> launches{0};
  return launches;
}

int64_t persistent_launches() { return persistent_launch_counter().load(); }

std::vector<at::Tensor> cell_step(const at::Tensor& input, at::TensorList hx,
                                  at::TensorList weights, c10::string_view mode, bool train) {
  const char* op = "rnnfast.cell_step";
  TORCH_CHECK(input.dim() == 2, op, ": input must be 2-D (N, H_in), got shape ", input.sizes());
  std::vector<at::Tensor> hx_steps;
  hx_steps.reserve(hx.size());
  for (const auto i : c10::irange(hx.size())) {
    TORCH_CHECK(hx[i].dim() == 2, op, ": hx[", i, "] must be 2-D (N, H), got shape ",
                hx[i].sizes());
    hx_steps.push_back(hx[i].unsqueeze(0));
  }
  auto h_n = std::get<1>(rnn_forward(input.unsqueeze(0), hx_steps, weights, std::nullopt,
                                     std::nullopt, mode, weights.size() > 2, 1, 0, false, train));
  for (auto& h : h_n) h = h.squeeze(0);
  return h_n;
}

}  // namespace rnnfast

TORCH_LIBRARY(rnnfast, m) {
  // Whole multi-layer (bi)directional RNN / LSTM / GRU over a time-major sequence.
  //   mode           nn.RNNBase's: "RNN_TANH" | "RNN_RELU" | "LSTM" | "GRU"; G = 1, 1, 4, 3
  //                  gates; P = proj_size if > 0 (LSTM only) else H
  //   input          (L, N, H_in) dense, or (sum(batch_sizes), H_in) packed
  //   hx             [h0 (num_layers * D, N, P)], or for LSTM [h0, c0 (num_layers * D, N, H)]
  //   weights        nn.RNNBase's _flat_weights: per layer, per direction
  //                  w_ih (G*H, H_in or D*P), w_hh (G*H, P)[, b_ih (G*H), b_hh (G*H)]
  //                  [, w_hr (P, H)]
  //   batch_sizes    None, or PackedSequence.batch_sizes (int64, CPU)
  //   dropout_masks  None, or (num_layers - 1, rows, D*P): multiplies the output of
  //                  each layer but the last (already scaled by 1 / (1 - p))
  //   train          keep what _rnn_backward needs
  // Returns output (L, N, D*P) or (rows, D*P), h_n (hx's layout), and the workspace:
  // [outputs of the layers below the top one (num_layers - 1, rows, D*P)], plus for
  // LSTM / GRU with train [gates after activation (num_layers, rows, D*G*H),
  // c (LSTM) or W_hn h_prev + b_hn (GRU) (num_layers, rows, D*H)].
  m.def(
      "rnn_forward(Tensor input, Tensor[] hx, Tensor[] weights, Tensor? batch_sizes, "
      "Tensor? dropout_masks, str mode, bool has_biases, int num_layers, int proj_size, "
      "bool bidirectional, bool train) -> (Tensor output, Tensor[] h_n, Tensor[] workspace)");
  // Backpropagation through time for rnn_forward. grad_output and the entries of
  // grad_h_n may be None (treated as zeros). Returns the gradients of input, of each
  // hx state and of every weight. output_mask: whether grad_input and grad_hx are
  // wanted; one that is not comes back as None (grad_input) or an empty list
  // (grad_hx), and the products that only it needs are skipped.
  m.def(
      "_rnn_backward(Tensor? grad_output, Tensor?[] grad_h_n, Tensor input, Tensor[] hx, "
      "Tensor[] weights, Tensor? batch_sizes, Tensor? dropout_masks, Tensor output, "
      "Tensor[] workspace, str mode, bool has_biases, int num_layers, int proj_size, "
      "bool bidirectional, bool[2] output_mask=[True, True]) -> (Tensor grad_input, "
      "Tensor[] grad_hx, Tensor[] grad_weights)");
  // One step of an Elman cell: h = act(input @ w_ih^T + b_ih + hx @ w_hh^T + b_hh).
  //   input (N, H_in), hx (N, H), w_ih (H, H_in), w_hh (H, H), b_ih / b_hh (H) or None
  m.def(
      "rnn_cell_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, str nonlinearity) -> Tensor");
  // Backward of rnn_cell_forward, given its output h. Returns the gradients of
  // input, hx, w_ih, w_hh and of the bias (one tensor: b_ih and b_hh share it;
  // empty when there is no bias). output_mask: whether grad_input and grad_hx are
  // wanted; one that is not comes back as None and its product is skipped.
  m.def(
      "_rnn_cell_backward(Tensor grad_h, Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, "
      "Tensor h, bool has_bias, str nonlinearity, bool[2] output_mask=[True, True]) -> "
      "(Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, Tensor grad_w_hh, "
      "Tensor grad_bias)");
  // One step of a cell of any mode on 2-D tensors: rnn_forward with L = 1, one layer,
  // one direction (its checks, kernels and autograd: this op only makes the views,
  // which cost a cell called once per step from Python more than its math at small sizes).
  //   input (N, H_in), hx [h (N, H)] or [h, c], weights [w_ih, w_hh[, b_ih, b_hh]]
  // Returns [h'] or [h', c'], each (N, H).
  m.def(
      "cell_step(Tensor input, Tensor[] hx, Tensor[] weights, str mode, bool train) "
      "-> Tensor[]",
      &rnnfast::cell_step);
  // How many persistent-kernel launches (CUDA, one per layer forward or backward)
  // this process has made: lets tests and benchmarks see which path ran.
  m.def("_persistent_launches() -> int", &rnnfast::persistent_launches);
  // Which CPU kernels this machine runs: "avx512_bf16", "avx512" (float32 GEMMs are
  // rnnfast's own, so float32 results do not depend on the thread count), "avx2"
  // (float32 GEMMs through BLAS; AVX2 cell math) or "generic".
  m.def("_cpu_kernels() -> str", &rnnfast::cpu_kernels);
}

namespace rnnfast {

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> rnn_forward(
    const at::Tensor& input, at::TensorList hx, at::TensorList weights,
    const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& dropout_masks,
    c10::string_view mode, bool has_biases, int64_t num_layers, int64_t proj_size,
    bool bidirectional, bool train) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("rnnfast::rnn_forward", "")
                       .typed<decltype(rnn_forward)>();
  return op.call(input, hx, weights, batch_sizes, dropout_masks, mode, has_biases, num_layers,
                 proj_size, bidirectional, train);
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> rnn_backward(
    const std::optional<at::Tensor>& grad_output,
    const c10::List<std::optional<at::Tensor>>& grad_h_n, const at::Tensor& input,
    at::TensorList hx, at::TensorList weights, const std::optional<at::Tensor>& batch_sizes,
    const std::optional<at::Tensor>& dropout_masks, const at::Tensor& output,
    at::TensorList workspace, c10::string_view mode, bool has_biases, int64_t num_layers,
    int64_t proj_size, bool bidirectional, std::array<bool, 2> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("rnnfast::_rnn_backward", "")
                       .typed<decltype(rnn_backward)>();
  return op.call(grad_output, grad_h_n, input, hx, weights, batch_sizes, dropout_masks, output,
                 workspace, mode, has_biases, num_layers, proj_size, bidirectional, output_mask);
}

at::Tensor rnn_cell_forward(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
                            const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                            const std::optional<at::Tensor>& b_hh,
                            c10::string_view nonlinearity) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("rnnfast::rnn_cell_forward", "")
                       .typed<decltype(rnn_cell_forward)>();
  return op.call(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity);
}

}  // namespace rnnfast

#ifdef RNNFAST_PYTHON_MODULE
#include <Python.h>
// An empty extension module: `import rnnfast._C` loads this shared library, whose
// static initializers above register the ops with the dispatcher.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
#endif
