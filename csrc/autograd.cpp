// Autograd of rnnfast::rnn_cell_forward in C++. A cell is called once per time step
// from Python, so the per-call cost of a Python autograd formula (torch.library's
// register_autograd wrapper: ~25 us) would be most of a small cell's time. The
// backward calls rnnfast::_rnn_cell_backward through the dispatcher, whose autograd
// (registered from Python, rnnfast/_ops.py) gives double backward.
//
// The sequence op's autograd stays in Python (rnnfast/_ops.py): its per-call cost is
// spread over all time steps.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

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
    c10::string_view nonlinearity) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("rnnfast::_rnn_cell_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const at::Tensor&, const at::Tensor&, bool, c10::string_view)>();
  return op.call(grad_h, input, hx, w_ih, w_hh, h, has_bias, nonlinearity);
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
    auto [gx, ghx, gwi, gwh, gb] = call_cell_backward(grad_outputs[0], saved[0], saved[1],
                                                      saved[2], saved[3], saved[4], has_bias,
                                                      nonlinearity);
    // b_ih and b_hh get the same gradient, as separate tensors.
    at::Tensor gb_hh = has_bias ? gb.clone() : at::Tensor();
    return {gx, ghx, gwi, gwh, has_bias ? gb : at::Tensor(), gb_hh, at::Tensor()};
  }
};

at::Tensor rnn_cell_forward_autograd(const at::Tensor& input, const at::Tensor& hx,
                                     const at::Tensor& w_ih, const at::Tensor& w_hh,
                                     const std::optional<at::Tensor>& b_ih,
                                     const std::optional<at::Tensor>& b_hh,
                                     c10::string_view nonlinearity) {
  return RnnCellFunction::apply(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity);
}

}  // namespace
}  // namespace rnnfast

TORCH_LIBRARY_IMPL(rnnfast, Autograd, m) {
  m.impl("rnn_cell_forward", &rnnfast::rnn_cell_forward_autograd);
}
