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

// Argument names for the messages, written out only when a check fails: the checks
// run on every call, and a cell or streaming step is a call per time step.
struct Indexed {  // e.g. hx[1]
  const char* list;
  int64_t k;
};
std::ostream& operator<<(std::ostream& os, const Indexed& n) {
  return os << n.list << "[" << n.k << "]";
}

struct WeightName {  // e.g. weights[5] (weight_hh_l1_reverse)
  const RnnSizes& s;
  int64_t layer, dir, k;
};
std::ostream& operator<<(std::ostream& os, const WeightName& n) {
  static const char* kinds[] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
  const bool is_hr = n.s.has_proj && n.k == n.s.weights_per_layer() - 1;
  return os << "weights[" << n.s.weight_index(n.layer, n.dir, n.k) << "] ("
            << (is_hr ? "weight_hr" : kinds[n.k]) << "_l" << n.layer
            << (n.dir == 1 ? "_reverse" : "") << ")";
}

template <typename Name>
void check_float_tensor(const char* op, const Name& name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), op, ": ", name, " must be a defined tensor");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be a floating-point tensor (float16, bfloat16, float32 or float64), got ",
              t.scalar_type());
}

template <typename Name>
void check_same(const char* op, const Name& name, const at::Tensor& t, const at::Tensor& ref,
                const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ",
              ref_name, " (", ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on the device of ", ref_name,
              " (", ref.device(), "), got ", t.device());
}

template <typename Name>
void check_shape(const char* op, const Name& name, const at::Tensor& t,
                 at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes().equals(expected), op, ": ", name, " must have shape ",
              shape_str(expected), ", got ", shape_str(t.sizes()));
}

const char* mode_name(CellKind k) {
  static const char* names[] = {"RNN_TANH", "RNN_RELU", "LSTM", "GRU"};
  return names[static_cast<int>(k)];
}

}  // namespace

CellKind parse_mode(c10::string_view mode) {
  if (mode == "RNN_TANH") return CellKind::RnnTanh;
  if (mode == "RNN_RELU") return CellKind::RnnRelu;
  if (mode == "LSTM") return CellKind::Lstm;
  if (mode == "GRU") return CellKind::Gru;
  TORCH_CHECK(false, "rnnfast: mode must be 'RNN_TANH', 'RNN_RELU', 'LSTM' or 'GRU', got '",
              std::string(mode), "'");
}

Activation parse_nonlinearity(c10::string_view nonlinearity) {
  if (nonlinearity == "tanh") return Activation::Tanh;
  if (nonlinearity == "relu") return Activation::Relu;
  TORCH_CHECK(false, "rnnfast: nonlinearity must be 'tanh' or 'relu', got '",
              std::string(nonlinearity), "'");
}

RnnSizes check_rnn_args(const char* op, const at::Tensor& input, at::TensorList hx,
                        at::TensorList weights, const std::optional<at::Tensor>& batch_sizes,
                        const std::optional<at::Tensor>& dropout_masks, c10::string_view mode,
                        bool has_biases, int64_t num_layers, int64_t proj_size,
                        bool bidirectional, bool train) {
  RnnSizes s;
  s.cell = parse_mode(mode);
  s.act = elman_activation(s.cell);
  s.G = cell_gates(s.cell);
  s.has_biases = has_biases;
  s.train = train;
  s.D = bidirectional ? 2 : 1;
  TORCH_CHECK(num_layers >= 1, op, ": num_layers must be >= 1, got ", num_layers);
  s.NL = num_layers;
  TORCH_CHECK(proj_size == 0 || s.cell == CellKind::Lstm, op, ": proj_size must be 0 for mode ",
              mode_name(s.cell), ", got ", proj_size);
  TORCH_CHECK(proj_size >= 0, op, ": proj_size must be >= 0, got ", proj_size);
  s.has_proj = proj_size > 0;

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

  // Weights: count, then shapes layer by layer. G*H and P come from weight_hh_l0.
  const int64_t expected_count = s.NL * s.D * s.weights_per_layer();
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == expected_count, op, ": expected ",
              expected_count, " weight tensors for mode=", mode_name(s.cell),
              ", num_layers=", s.NL, ", bidirectional=", bidirectional,
              ", has_biases=", has_biases, ", proj_size=", proj_size, ", got ", weights.size());
  TORCH_CHECK(weights[1].defined() && weights[1].dim() == 2 && weights[1].size(0) % s.G == 0,
              op, ": weights[1] (weight_hh_l0) must be a 2-D tensor (", s.G, "*H, ",
              s.has_proj ? "proj_size" : "H", "), got ",
              weights[1].defined() ? shape_str(weights[1].sizes()) : std::string("undefined"));
  s.H = weights[1].size(0) / s.G;
  s.P = s.has_proj ? proj_size : s.H;
  TORCH_CHECK(!s.has_proj || proj_size < s.H, op,
              ": proj_size must be >= 0 and < hidden_size (", s.H, "), got ", proj_size);
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

  TORCH_CHECK(static_cast<int64_t>(hx.size()) == s.states(), op, ": hx must hold ", s.states(),
              " tensor", s.states() == 2 ? "s" : "", " for mode ", mode_name(s.cell),
              s.states() == 2 ? " ([h0, c0])" : " ([h0])", ", got ", hx.size());
  for (const auto k : c10::irange(s.states())) {
    const Indexed name{"hx", k};
    check_float_tensor(op, name, hx[k]);
    check_same(op, name, hx[k], input, "input");
    check_shape(op, name, hx[k], {s.NL * s.D, s.N, k == 0 ? s.P : s.H});
  }

  for (const auto layer : c10::irange(s.NL)) {
    for (const auto dir : c10::irange(s.D)) {
      for (const auto k : c10::irange(s.weights_per_layer())) {
        const at::Tensor& w = weights[s.weight_index(layer, dir, k)];
        const WeightName name{s, layer, dir, k};
        TORCH_CHECK(w.defined(), op, ": ", name, " is undefined");
        check_same(op, name, w, input, "input");
        if (s.has_proj && k == s.weights_per_layer() - 1)
          check_shape(op, name, w, {s.P, s.H});
        else if (k == 0)
          check_shape(op, name, w, {s.G * s.H, s.layer_input_size(layer)});
        else if (k == 1)
          check_shape(op, name, w, {s.G * s.H, s.P});
        else
          check_shape(op, name, w, {s.G * s.H});
      }
    }
  }

  if (dropout_masks.has_value() && dropout_masks->defined()) {
    const at::Tensor& m = *dropout_masks;
    check_same(op, "dropout_masks", m, input, "input");
    check_shape(op, "dropout_masks", m, {s.NL - 1, s.rows, s.D * s.P});
  }
  return s;
}

void check_rnn_backward_args(const RnnSizes& s, const at::Tensor& input,
                             const std::optional<at::Tensor>& grad_output,
                             const c10::List<std::optional<at::Tensor>>& grad_h_n,
                             const at::Tensor& output, at::TensorList workspace) {
  const char* op = "rnnfast._rnn_backward";
  check_same(op, "output", output, input, "input");
  check_shape(op, "output", output, output_shape(s));
  const auto shapes = workspace_shapes(s);
  TORCH_CHECK(workspace.size() >= shapes.size() || is_elman(s.cell), op,
              ": the workspace has no saved gates (rnn_forward ran with train=False)");
  TORCH_CHECK(workspace.size() == shapes.size(), op, ": workspace must hold ", shapes.size(),
              " tensors for mode ", mode_name(s.cell), ", got ", workspace.size());
  for (const auto k : c10::irange(shapes.size())) {
    const Indexed name{"workspace", static_cast<int64_t>(k)};
    check_same(op, name, workspace[k], input, "input");
    check_shape(op, name, workspace[k], shapes[k]);
  }
  if (grad_output.has_value() && grad_output->defined()) {
    check_same(op, "grad_output", *grad_output, input, "input");
    check_shape(op, "grad_output", *grad_output, output_shape(s));
  }
  TORCH_CHECK(static_cast<int64_t>(grad_h_n.size()) == s.states(), op, ": grad_h_n must hold ",
              s.states(), " entries for mode ", mode_name(s.cell), ", got ", grad_h_n.size());
  for (const auto k : c10::irange(s.states())) {
    const std::optional<at::Tensor> g = grad_h_n.get(k);
    if (!g.has_value() || !g->defined()) continue;
    const Indexed name{"grad_h_n", k};
    check_same(op, name, *g, input, "input");
    check_shape(op, name, *g, {s.NL * s.D, s.N, k == 0 ? s.P : s.H});
  }
}

std::vector<int64_t> output_shape(const RnnSizes& s) {
  if (s.packed) return {s.rows, s.D * s.P};
  return {s.T, s.N, s.D * s.P};
}

std::vector<std::vector<int64_t>> workspace_shapes(const RnnSizes& s) {
  std::vector<std::vector<int64_t>> shapes{{s.NL - 1, s.rows, s.D * s.P}};
  if (!is_elman(s.cell) && s.train) {
    shapes.push_back({s.NL, s.rows, s.D * s.G * s.H});
    shapes.push_back({s.NL, s.rows, s.D * s.H});
  }
  return shapes;
}

ForwardOutputs allocate_forward_outputs(const RnnSizes& s, const at::Tensor& input) {
  ForwardOutputs out;
  out.output = at::empty(output_shape(s), input.options());
  for (const auto k : c10::irange(s.states()))
    out.h_n.push_back(at::empty({s.NL * s.D, s.N, k == 0 ? s.P : s.H}, input.options()));
  for (const auto& shape : workspace_shapes(s))
    out.workspace.push_back(at::empty(shape, input.options()));
  if (nothing_to_compute(s)) {
    out.output.zero_();
    for (auto& h : out.h_n) h.zero_();
    for (auto& w : out.workspace) w.zero_();
  }
  return out;
}

BackwardOutputs allocate_backward_outputs(const RnnSizes& s, const at::Tensor& input,
                                          at::TensorList hx, at::TensorList weights) {
  BackwardOutputs out;
  out.grad_input = at::empty(input.sizes(), input.options());
  for (const auto& h : hx) out.grad_hx.push_back(at::empty(h.sizes(), h.options()));
  for (const auto& w : weights) out.grad_weights.push_back(at::empty(w.sizes(), w.options()));
  if (nothing_to_compute(s)) {
    out.grad_input.zero_();
    for (auto& g : out.grad_hx) g.zero_();
    for (auto& g : out.grad_weights) g.zero_();
  }
  return out;
}

at::Tensor initial_output_grad(const RnnSizes& s, const std::optional<at::Tensor>& grad_output,
                               const at::Tensor& input, std::optional<at::ScalarType> dtype) {
  const at::ScalarType type = dtype.value_or(input.scalar_type());
  if (grad_output.has_value() && grad_output->defined())
    return grad_output->reshape({s.rows, s.D * s.P})
        .to(type, /*non_blocking=*/false, /*copy=*/true, at::MemoryFormat::Contiguous);
  return at::zeros({s.rows, s.D * s.P}, input.options().dtype(type));
}

std::vector<at::Tensor> contiguous_all(at::TensorList tensors) {
  std::vector<at::Tensor> out;
  out.reserve(tensors.size());
  for (const auto& t : tensors) out.push_back(t.contiguous());
  return out;
}

at::Tensor layer_input(int64_t layer, const at::Tensor& x2d, const at::Tensor& outputs,
                       const std::optional<at::Tensor>& masks) {
  if (layer == 0) return x2d;
  at::Tensor below = outputs[layer - 1];
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
