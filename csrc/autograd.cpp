// Autograd of rnnfast::rnn_forward and rnnfast::rnn_cell_forward in C++. A cell, or a
// streaming call with T = 1, runs once per time step from Python, so the per-call cost
// of a Python autograd formula (torch.library's register_autograd wrapper: ~20-25 us,
// as much as a small step's whole kernel) would dominate. The backward ops
// (_rnn_backward, _rnn_cell_backward) keep their autograd in Python (rnnfast/_ops.py),
// which gives double backward; they are called through that autograd kernel only when
// a graph of the backward is being recorded (create_graph), and below it otherwise.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "rnnfast.h"

#include <array>
#include <optional>
#include <string>
#include <tuple>

namespace rnnfast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_cell_forward(const at::Tensor& input, const at::Tensor& hx,
                             const at::Tensor& w_ih, const at::Tensor& w_hh,
                             const std::optional<at::Tensor>& b_ih,
                             const std::optional<at::Tensor>& b_hh,
                             c10::string_view nonlinearity) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("rnnfast::rnn_cell_forward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const std::optional<at::Tensor>&,
                                         const std::optional<at::Tensor>&, c10::string_view)>();
  return op.call(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_cell_backward(
    const at::Tensor& grad_h, const at::Tensor& input, const at::Tensor& hx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& h, bool has_bias,
    c10::string_view nonlinearity, std::array<bool, 2> output_mask) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("rnnfast::_rnn_cell_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const at::Tensor&, const at::Tensor&, bool, c10::string_view,
              std::array<bool, 2>)>();
  return op.call(grad_h, input, hx, w_ih, w_hh, h, has_bias, nonlinearity, output_mask);
}

class RnnCellFunction : public torch::autograd::Function<RnnCellFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& hx,
                            const at::Tensor& w_ih, const at::Tensor& w_hh,
                            const std::optional<at::Tensor>& b_ih,
                            const std::optional<at::Tensor>& b_hh,
                            c10::string_view nonlinearity) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor h = call_cell_forward(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity);
    ctx->save_for_backward({input, hx, w_ih, w_hh, h});
    ctx->saved_data["has_bias"] = b_ih.has_value() && b_ih->defined();
    ctx->saved_data["nonlinearity"] = std::string(nonlinearity);
    return h;
  }

  // One gradient per forward argument: input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const std::string nonlinearity = ctx->saved_data["nonlinearity"].toStringRef();
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    // The products for input's and hx's gradients only when they are wanted.
    const std::array<bool, 2> output_mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    auto [gx, ghx, gwi, gwh, gb] = call_cell_backward(grad_outputs[0], saved[0], saved[1],
                                                      saved[2], saved[3], saved[4], has_bias,
                                                      nonlinearity, output_mask);
    // b_ih and b_hh get the same gradient, as separate tensors.
    at::Tensor gb_hh = has_bias ? gb.clone() : at::Tensor();
    return {gx, ghx, gwi, gwh, has_bias ? gb : at::Tensor(), gb_hh, at::Tensor()};
  }
};

// Whether a call needs the autograd node: grad mode on and an input requiring grad, or
// a forward-mode tangent (which the node refuses with an error). Otherwise the kernel is
// called directly: building the node, even one that records nothing, cost as much as
// the kernel of a small step.
bool needs_node(at::TensorList tensors) {
  const bool grad_mode = at::GradMode::is_enabled();
  for (const at::Tensor& t : tensors) {
    if (!t.defined()) continue;
    if ((grad_mode && t.requires_grad()) || t._fw_grad(/*level=*/0).defined()) return true;
  }
  return false;
}

// rnn_forward's outputs flattened for the autograd node: [output, h_n..., workspace...].
class RnnForwardFunction : public torch::autograd::Function<RnnForwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, at::TensorList hx,
                               at::TensorList weights,
                               const std::optional<at::Tensor>& batch_sizes,
                               const std::optional<at::Tensor>& dropout_masks,
                               c10::string_view mode, bool has_biases, int64_t num_layers,
                               int64_t proj_size, bool bidirectional, bool train) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, h_n, workspace] =
        rnnfast::rnn_forward(input, hx, weights, batch_sizes, dropout_masks, mode, has_biases,
                             num_layers, proj_size, bidirectional, train);
    variable_list saved{input};
    saved.insert(saved.end(), hx.begin(), hx.end());
    saved.insert(saved.end(), weights.begin(), weights.end());
    saved.push_back(batch_sizes.value_or(at::Tensor()));
    saved.push_back(dropout_masks.value_or(at::Tensor()));
    saved.push_back(output);
    saved.insert(saved.end(), workspace.begin(), workspace.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["n_states"] = static_cast<int64_t>(hx.size());
    ctx->saved_data["n_weights"] = static_cast<int64_t>(weights.size());
    ctx->saved_data["mode"] = std::string(mode);
    ctx->saved_data["has_biases"] = has_biases;
    ctx->saved_data["num_layers"] = num_layers;
    ctx->saved_data["proj_size"] = proj_size;
    ctx->saved_data["bidirectional"] = bidirectional;
    // A gradient nobody passed stays undefined: _rnn_backward takes None as zeros
    // without reading a tensor of them.
    ctx->set_materialize_grads(false);
    for (const at::Tensor& w : workspace) ctx->mark_non_differentiable({w});

    variable_list outputs{output};
    outputs.insert(outputs.end(), h_n.begin(), h_n.end());
    outputs.insert(outputs.end(), workspace.begin(), workspace.end());
    return outputs;
  }

  // One gradient per forward argument, a TensorList counting one per tensor: input,
  // hx..., weights..., then batch_sizes, dropout_masks and six non-tensor arguments.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const auto S = static_cast<size_t>(ctx->saved_data["n_states"].toInt());
    const auto W = static_cast<size_t>(ctx->saved_data["n_weights"].toInt());
    const at::Tensor& input = saved[0];
    const std::vector<at::Tensor> hx(saved.begin() + 1, saved.begin() + 1 + S);
    const std::vector<at::Tensor> weights(saved.begin() + 1 + S, saved.begin() + 1 + S + W);
    auto optional = [](const at::Tensor& t) {
      return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
    };
    const size_t tail = 1 + S + W;
    const std::vector<at::Tensor> workspace(saved.begin() + tail + 3, saved.end());

    c10::List<std::optional<at::Tensor>> grad_h_n;
    for (size_t s = 0; s < S; ++s) grad_h_n.push_back(optional(grad_outputs[1 + s]));

    // The products for input's and hx's gradients only when they are wanted.
    std::array<bool, 2> output_mask{ctx->needs_input_grad(0), false};
    for (size_t s = 0; s < S; ++s) output_mask[1] = output_mask[1] || ctx->needs_input_grad(1 + s);

    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    auto [grad_input, grad_hx, grad_weights] = rnnfast::rnn_backward(
        optional(grad_outputs[0]), grad_h_n, input, hx, weights, optional(saved[tail]),
        optional(saved[tail + 1]), saved[tail + 2], workspace,
        ctx->saved_data["mode"].toStringRef(), ctx->saved_data["has_biases"].toBool(),
        ctx->saved_data["num_layers"].toInt(), ctx->saved_data["proj_size"].toInt(),
        ctx->saved_data["bidirectional"].toBool(), output_mask);

    variable_list grads{grad_input};
    grad_hx.resize(S);  // empty when not wanted
    grads.insert(grads.end(), grad_hx.begin(), grad_hx.end());
    grads.insert(grads.end(), grad_weights.begin(), grad_weights.end());
    grads.resize(grads.size() + 8);  // batch_sizes, dropout_masks, mode ... train
    return grads;
  }
};

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> rnn_forward_autograd(
    const at::Tensor& input, at::TensorList hx, at::TensorList weights,
    const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& dropout_masks,
    c10::string_view mode, bool has_biases, int64_t num_layers, int64_t proj_size,
    bool bidirectional, bool train) {
  if (!needs_node(input) && !needs_node(hx) && !needs_node(weights)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return rnnfast::rnn_forward(input, hx, weights, batch_sizes, dropout_masks, mode, has_biases,
                                num_layers, proj_size, bidirectional, train);
  }
  variable_list flat = RnnForwardFunction::apply(input, hx, weights, batch_sizes, dropout_masks,
                                                 mode, has_biases, num_layers, proj_size,
                                                 bidirectional, train);
  const size_t S = hx.size();
  return {flat[0], std::vector<at::Tensor>(flat.begin() + 1, flat.begin() + 1 + S),
          std::vector<at::Tensor>(flat.begin() + 1 + S, flat.end())};
}

at::Tensor rnn_cell_forward_autograd(const at::Tensor& input, const at::Tensor& hx,
                                     const at::Tensor& w_ih, const at::Tensor& w_hh,
                                     const std::optional<at::Tensor>& b_ih,
                                     const std::optional<at::Tensor>& b_hh,
                                     c10::string_view nonlinearity) {
  if (!needs_node({input, hx, w_ih, w_hh, b_ih.value_or(at::Tensor()),
                   b_hh.value_or(at::Tensor())})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_cell_forward(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity);
  }
  return RnnCellFunction::apply(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity);
}

}  // namespace
}  // namespace rnnfast

TORCH_LIBRARY_IMPL(rnnfast, Autograd, m) {
  m.impl("rnn_forward", &rnnfast::rnn_forward_autograd);
  m.impl("rnn_cell_forward", &rnnfast::rnn_cell_forward_autograd);
}
