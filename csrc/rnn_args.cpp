#include "rnn_args.h"

#include <c10/util/irange.h>
#include <c10/util/safe_numerics.h>
#include <sstream>

namespace rnnfast {
namespace {

std::string shape_str(at::IntArrayRef sizes) {
  std::ostringstream os;
  os << sizes;
  return os.str();
}

std::string shape_str(std::initializer_list<int64_t> sizes) {
  return shape_str(at::IntArrayRef(sizes));
}

void check_float_tensor(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), op, ": ", name, " must be a defined tensor");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be a floating-point tensor (float16, bfloat16, float32 or float64), got ",
              t.scalar_type());
}

void check_same(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref,
                const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ",
              ref_name, " (", ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on the device of ", ref_name,
              " (", ref.device(), "), got ", t.device());
}

void check_shape(const char* op, const std::string& name, const at::Tensor& t,
                 at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes().equals(expected), op, ": ", name, " must have shape ",
              shape_str(expected), ", got ", shape_str(t.sizes()));
}

const char* weight_kind(int64_t k) {
  static const char* kinds[] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
  return kinds[k];
}

std::string weight_name(const RnnSizes& s, int64_t layer, int64_t dir, int64_t k) {
  std::ostringstream os;
  os << "weights[" << (layer * s.D + dir) * s.weights_per_layer() + k << "] ("
     << weight_kind(k) << "_l" << layer << (dir == 1 ? "_reverse" : "") << ")";
  return os.str();
}

}  // namespace

Activation parse_nonlinearity(c10::string_view nonlinearity) {
  if (nonlinearity == "tanh") return Activation::Tanh;
  if (nonlinearity == "relu") return Activation::Relu;
  TORCH_CHECK(false, "rnnfast: nonlinearity must be 'tanh' or 'relu', got '",
              std::string(nonlinearity), "'");
}

RnnSizes check_rnn_args(const char* op, const at::Tensor& input, const at::Tensor& hx,
                        at::TensorList weights, const std::optional<at::Tensor>& batch_sizes,
                        const std::optional<at::Tensor>& dropout_masks, bool has_biases,
                        int64_t num_layers, c10::string_view nonlinearity, bool bidirectional) {
  RnnSizes s;
  s.act = parse_nonlinearity(nonlinearity);
  s.has_biases = has_biases;
  s.D = bidirectional ? 2 : 1;
  TORCH_CHECK(num_layers >= 1, op, ": num_layers must be >= 1, got ", num_layers);
  s.NL = num_layers;

  check_float_tensor(op, "input", input);
  s.packed = batch_sizes.has_value() && batch_sizes->defined();
  if (s.packed) {
    TORCH_CHECK(input.dim() == 2, op,
                ": packed input (with batch_sizes) must be 2-D (sum of lengths, H_in), got ",
                input.dim(), "-D tensor of shape ", shape_str(input.sizes()));
  } else {
    TORCH_CHECK(input.dim() == 3, op, ": input must be 3-D (L, N, H_in), got ", input.dim(),
                "-D tensor of shape ", shape_str(input.sizes()));
  }

  // Weights: count, then shapes layer by layer. H comes from weight_hh_l0.
  const int64_t expected_count = s.NL * s.D * s.weights_per_layer();
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == expected_count, op, ": expected ",
              expected_count, " weight tensors for num_layers=", s.NL,
              ", bidirectional=", bidirectional, ", has_biases=", has_biases, ", got ",
              weights.size());
  TORCH_CHECK(weights[1].defined() && weights[1].dim() == 2, op,
              ": weights[1] (weight_hh_l0) must be a 2-D tensor (H, H), got ",
              weights[1].defined() ? shape_str(weights[1].sizes()) : std::string("undefined"));
  s.H = weights[1].size(0);
  s.I = input.size(-1);

  if (s.packed) {
    const at::Tensor& bs = *batch_sizes;
    TORCH_CHECK(bs.dim() == 1 && bs.scalar_type() == at::kLong && bs.device().is_cpu(), op,
                ": batch_sizes must be a 1-D int64 CPU tensor, got a ", bs.dim(), "-D ",
                bs.scalar_type(), " tensor on ", bs.device());
    s.T = bs.numel();
    TORCH_CHECK(s.T > 0, op, ": batch_sizes must not be empty");
    auto bs_c = bs.contiguous();
    const int64_t* p = bs_c.const_data_ptr<int64_t>();
    s.batch_sizes.assign(p, p + s.T);
    int64_t total = 0;
    for (const auto t : c10::irange(s.T)) {
      const int64_t b = s.batch_sizes[t];
      TORCH_CHECK(b > 0, op, ": batch_sizes must be positive, got batch_sizes[", t, "] = ", b);
      TORCH_CHECK(t == 0 || b <= s.batch_sizes[t - 1], op,
                  ": batch_sizes must be non-increasing, got batch_sizes[", t, "] = ", b,
                  " > batch_sizes[", t - 1, "] = ", s.batch_sizes[t - 1]);
      s.offsets.push_back(total);
      TORCH_CHECK(!c10::add_overflows(total, b, &total), op,
                  ": sum(batch_sizes) overflows int64 at batch_sizes[", t, "]");
    }
    TORCH_CHECK(total == input.size(0), op, ": sum(batch_sizes) = ", total,
                " must equal the number of rows of the packed input, got ", input.size(0));
    s.N = s.batch_sizes[0];
    s.rows = total;
  } else {
    s.T = input.size(0);
    s.N = input.size(1);
    TORCH_CHECK(s.T > 0, "Expected sequence length to be larger than 0 in RNN");
    s.batch_sizes.assign(s.T, s.N);
    for (const auto t : c10::irange(s.T)) s.offsets.push_back(t * s.N);
    s.rows = s.T * s.N;
  }

  check_float_tensor(op, "hx", hx);
  check_same(op, "hx", hx, input, "input");
  check_shape(op, "hx", hx, {s.NL * s.D, s.N, s.H});

  for (const auto layer : c10::irange(s.NL)) {
    for (const auto dir : c10::irange(s.D)) {
      for (const auto k : c10::irange(s.weights_per_layer())) {
        const at::Tensor& w = weights[(layer * s.D + dir) * s.weights_per_layer() + k];
        const std::string name = weight_name(s, layer, dir, k);
        TORCH_CHECK(w.defined(), op, ": ", name, " is undefined");
        check_same(op, name.c_str(), w, input, "input");
        if (k == 0) check_shape(op, name, w, {s.H, s.layer_input_size(layer)});
        if (k == 1) check_shape(op, name, w, {s.H, s.H});
        if (k >= 2) check_shape(op, name, w, {s.H});
      }
    }
  }

  if (dropout_masks.has_value() && dropout_masks->defined()) {
    const at::Tensor& m = *dropout_masks;
    check_same(op, "dropout_masks", m, input, "input");
    check_shape(op, "dropout_masks", m, {s.NL - 1, s.rows, s.D * s.H});
  }
  return s;
}

void check_rnn_backward_args(const RnnSizes& s, const at::Tensor& input,
                             const std::optional<at::Tensor>& grad_output,
                             const std::optional<at::Tensor>& grad_h_n, const at::Tensor& output,
                             const at::Tensor& workspace) {
  const char* op = "rnnfast._rnn_backward";
  check_same(op, "output", output, input, "input");
  check_shape(op, "output", output, output_shape(s));
  check_same(op, "workspace", workspace, input, "input");
  check_shape(op, "workspace", workspace, workspace_shape(s));
  if (grad_output.has_value() && grad_output->defined()) {
    check_same(op, "grad_output", *grad_output, input, "input");
    check_shape(op, "grad_output", *grad_output, output_shape(s));
  }
  if (grad_h_n.has_value() && grad_h_n->defined()) {
    check_same(op, "grad_h_n", *grad_h_n, input, "input");
    check_shape(op, "grad_h_n", *grad_h_n, {s.NL * s.D, s.N, s.H});
  }
}

std::vector<int64_t> output_shape(const RnnSizes& s) {
  if (s.packed) return {s.rows, s.D * s.H};
  return {s.T, s.N, s.D * s.H};
}

std::vector<int64_t> workspace_shape(const RnnSizes& s) {
  return {s.NL - 1, s.rows, s.D * s.H};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> allocate_forward_outputs(const RnnSizes& s,
                                                                         const at::Tensor& input) {
  at::Tensor output = at::empty(output_shape(s), input.options());
  at::Tensor h_n = at::empty({s.NL * s.D, s.N, s.H}, input.options());
  at::Tensor workspace = at::empty(workspace_shape(s), input.options());
  if (nothing_to_compute(s)) {
    output.zero_();
    h_n.zero_();
  }
  return {output, h_n, workspace};
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> allocate_backward_outputs(
    const RnnSizes& s, const at::Tensor& input, const at::Tensor& hx, at::TensorList weights) {
  at::Tensor grad_input = at::empty(input.sizes(), input.options());
  at::Tensor grad_hx = at::empty(hx.sizes(), hx.options());
  std::vector<at::Tensor> grad_weights;
  for (const auto& w : weights) grad_weights.push_back(at::empty(w.sizes(), w.options()));
  if (nothing_to_compute(s)) {
    grad_input.zero_();
    grad_hx.zero_();
    for (auto& g : grad_weights) g.zero_();
  }
  return {grad_input, grad_hx, grad_weights};
}

at::Tensor initial_output_grad(const RnnSizes& s, const std::optional<at::Tensor>& grad_output,
                               const at::Tensor& input, std::optional<at::ScalarType> dtype) {
  const at::ScalarType type = dtype.value_or(input.scalar_type());
  if (grad_output.has_value() && grad_output->defined())
    return grad_output->reshape({s.rows, s.D * s.H})
        .to(type, /*non_blocking=*/false, /*copy=*/true, at::MemoryFormat::Contiguous);
  return at::zeros({s.rows, s.D * s.H}, input.options().dtype(type));
}

std::vector<at::Tensor> contiguous_all(at::TensorList tensors) {
  std::vector<at::Tensor> out;
  out.reserve(tensors.size());
  for (const auto& t : tensors) out.push_back(t.contiguous());
  return out;
}

at::Tensor layer_input(int64_t layer, const at::Tensor& x2d, const at::Tensor& workspace,
                       const std::optional<at::Tensor>& masks) {
  if (layer == 0) return x2d;
  at::Tensor below = workspace[layer - 1];
  if (masks.has_value() && masks->defined()) return below * (*masks)[layer - 1];
  return below;
}

CellSizes check_cell_args(const char* op, const at::Tensor& input, const at::Tensor& hx,
                          const at::Tensor& w_ih, const at::Tensor& w_hh,
                          const std::optional<at::Tensor>& b_ih,
                          const std::optional<at::Tensor>& b_hh, c10::string_view nonlinearity) {
  CellSizes s;
  s.act = parse_nonlinearity(nonlinearity);
  check_float_tensor(op, "input", input);
  TORCH_CHECK(input.dim() == 2, op, ": input must be 2-D (N, H_in), got ", input.dim(),
              "-D tensor of shape ", shape_str(input.sizes()));
  s.N = input.size(0);
  s.I = input.size(1);
  TORCH_CHECK(w_hh.defined() && w_hh.dim() == 2, op, ": w_hh must be a 2-D tensor (H, H)");
  s.H = w_hh.size(0);
  check_same(op, "hx", hx, input, "input");
  check_shape(op, "hx", hx, {s.N, s.H});
  check_same(op, "w_ih", w_ih, input, "input");
  check_shape(op, "w_ih", w_ih, {s.H, s.I});
  check_same(op, "w_hh", w_hh, input, "input");
  check_shape(op, "w_hh", w_hh, {s.H, s.H});
  const bool has_b_ih = b_ih.has_value() && b_ih->defined();
  const bool has_b_hh = b_hh.has_value() && b_hh->defined();
  TORCH_CHECK(has_b_ih == has_b_hh, op, ": b_ih and b_hh must both be given or both be None");
  s.has_bias = has_b_ih;
  if (s.has_bias) {
    check_same(op, "b_ih", *b_ih, input, "input");
    check_shape(op, "b_ih", *b_ih, {s.H});
    check_same(op, "b_hh", *b_hh, input, "input");
    check_shape(op, "b_hh", *b_hh, {s.H});
  }
  return s;
}

}  // namespace rnnfast
