// Public C++ API of rnnfast: typed entry points that call the dispatcher, so C++
// callers get the same device dispatch and checks as Python. Shapes are documented
// on the schemas in ops.cpp. rnn_forward and rnn_cell_forward have C++ autograd
// kernels (autograd.cpp), so C++ callers get gradients through them too.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>
#include <array>
#include <optional>
#include <tuple>
#include <vector>

namespace rnnfast {

// mode: "RNN_TANH" | "RNN_RELU" | "LSTM" | "GRU"; hx: [h0] or [h0, c0] (LSTM).
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> rnn_forward(
    const at::Tensor& input, at::TensorList hx, at::TensorList weights,
    const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& dropout_masks,
    c10::string_view mode, bool has_biases, int64_t num_layers, int64_t proj_size,
    bool bidirectional, bool train);

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> rnn_backward(
    const std::optional<at::Tensor>& grad_output,
    const c10::List<std::optional<at::Tensor>>& grad_h_n, const at::Tensor& input,
    at::TensorList hx, at::TensorList weights, const std::optional<at::Tensor>& batch_sizes,
    const std::optional<at::Tensor>& dropout_masks, const at::Tensor& output,
    at::TensorList workspace, c10::string_view mode, bool has_biases, int64_t num_layers,
    int64_t proj_size, bool bidirectional, std::array<bool, 2> output_mask = {true, true});

// rnn_forward for one step of a one-layer cell on 2-D input and states: returns h_n (h'
// or h', c'), each (N, H). Composite: its gradients are rnn_forward's.
std::vector<at::Tensor> cell_step(const at::Tensor& input, at::TensorList hx,
                                  at::TensorList weights, c10::string_view mode, bool train);

at::Tensor rnn_cell_forward(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
                            const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                            const std::optional<at::Tensor>& b_hh, c10::string_view nonlinearity);

}  // namespace rnnfast
