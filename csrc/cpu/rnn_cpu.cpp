// The CPU entry points of the rnnfast ops: argument checks, dtype routing (float16 and
// bfloat16 without AVX512-BF16 through float32), the one-step Elman cell op, and the
// sequence ops on the sequence driver (sequence_cpu.h) for every cell.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <cstring>

#include "../kernels/activations.h"
#include "../rnn_args.h"
#include "cpu_common.h"
#include "elman_cpu.h"
#include "parallel_tiles.h"
#include "row_kernels.h"
#include "sequence_cpu.h"
#include "step_avx512.h"

#include <omp.h>

namespace rnnfast::cpu {
namespace {

// Rounds a list of float32 results back to the input's dtype.
std::vector<at::Tensor> to_dtype(std::vector<at::Tensor> ts, at::ScalarType dtype) {
  for (auto& t : ts) t = t.to(dtype);
  return ts;
}

using ForwardResult = std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>;

ForwardResult rnn_forward_cpu(const at::Tensor& input, at::TensorList hx, at::TensorList weights,
                              const std::optional<at::Tensor>& batch_sizes,
                              const std::optional<at::Tensor>& dropout_masks,
                              c10::string_view mode, bool has_biases, int64_t num_layers,
                              int64_t proj_size, bool bidirectional, bool train) {
  const char* op = "rnnfast.rnn_forward";
  const RnnSizes s = check_rnn_args(op, input, hx, weights, batch_sizes, dropout_masks, mode,
                                    has_biases, num_layers, proj_size, bidirectional, train);
  const bool bf16 = is_elman(s.cell) && use_bf16_path(input);
  if (is_reduced(input) && !bf16) {
    const auto dt = input.scalar_type();
    auto [o, h, w] = rnn_forward_cpu(to_f32(input), to_f32(hx), to_f32(weights), batch_sizes,
                                     to_f32(dropout_masks), mode, has_biases, num_layers,
                                     proj_size, bidirectional, train);
    return {o.to(dt), to_dtype(h, dt), to_dtype(w, dt)};
  }
  if (!bf16) check_cpu_dtype(op, input);
  ForwardOutputs out = allocate_forward_outputs(s, input);
  if (nothing_to_compute(s)) return {out.output, out.h_n, out.workspace};
  const at::Tensor x2d = input.contiguous().view({s.rows, s.I});
  const auto hx_c = contiguous_all(hx);
  const auto w = contiguous_all(weights);
  const at::Tensor out2d = out.output.view({s.rows, s.D * s.P});
  if (bf16) {
    elman_forward_bf16(s, x2d, hx_c[0], w, dropout_masks, out2d, out.h_n[0], out.workspace[0]);
  } else {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnn_forward_cpu", [&] {
      sequence_forward<scalar_t>(s, x2d, hx_c, w, dropout_masks, out2d, out.h_n, out.workspace);
    });
  }
  return {out.output, out.h_n, out.workspace};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> rnn_backward_cpu(
    const std::optional<at::Tensor>& grad_output,
    const c10::List<std::optional<at::Tensor>>& grad_h_n, const at::Tensor& input,
    at::TensorList hx, at::TensorList weights, const std::optional<at::Tensor>& batch_sizes,
    const std::optional<at::Tensor>& dropout_masks, const at::Tensor& output,
    at::TensorList workspace, c10::string_view mode, bool has_biases, int64_t num_layers,
    int64_t proj_size, bool bidirectional, std::array<bool, 2> output_mask) {
  const char* op = "rnnfast._rnn_backward";
  const RnnSizes s = check_rnn_args(op, input, hx, weights, batch_sizes, dropout_masks, mode,
                                    has_biases, num_layers, proj_size, bidirectional,
                                    /*train=*/true);
  check_rnn_backward_args(s, input, grad_output, grad_h_n, output, workspace);
  const bool bf16 = is_elman(s.cell) && use_bf16_path(input);
  if (is_reduced(input) && !bf16) {
    const auto dt = input.scalar_type();
    auto [gi, ghx, gw] = rnn_backward_cpu(
        to_f32(grad_output), to_f32(grad_h_n), to_f32(input), to_f32(hx), to_f32(weights),
        batch_sizes, to_f32(dropout_masks), to_f32(output), to_f32(workspace), mode, has_biases,
        num_layers, proj_size, bidirectional, output_mask);
    return {gi.defined() ? gi.to(dt) : gi, to_dtype(ghx, dt), to_dtype(gw, dt)};
  }
  if (!bf16) check_cpu_dtype(op, input);

  BackwardOutputs out = allocate_backward_outputs(s, input, hx, weights);
  if (nothing_to_compute(s)) return masked(std::move(out), output_mask);
  // The bf16 kernels keep output and h_n gradients in float32.
  const at::ScalarType grad_type = bf16 ? at::kFloat : input.scalar_type();
  at::Tensor dY = initial_output_grad(s, grad_output, input, grad_type);
  std::vector<at::Tensor> ghn;
  for (const auto k : c10::irange(s.states())) {
    const at::Tensor g = value_or_undefined(grad_h_n.get(k));
    ghn.push_back(g.defined() ? g.to(grad_type).contiguous() : at::Tensor());
  }
  const at::Tensor x2d = input.contiguous().view({s.rows, s.I});
  const auto hx_c = contiguous_all(hx);
  const auto w = contiguous_all(weights);
  const at::Tensor out2d = output.contiguous().view({s.rows, s.D * s.P});
  const auto ws = contiguous_all(workspace);
  const at::Tensor grad_x2d = out.grad_input.view({s.rows, s.I});
  if (bf16) {
    elman_backward_bf16(s, x2d, hx_c[0], w, dropout_masks, out2d, ws[0], dY, ghn[0], grad_x2d,
                  out.grad_hx[0], out.grad_weights);
  } else {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnn_backward_cpu", [&] {
      sequence_backward<scalar_t>(s, x2d, hx_c, w, dropout_masks, out2d, ws, dY, ghn, grad_x2d,
                                  out.grad_hx, out.grad_weights, output_mask);
    });
  }
  return masked(std::move(out), output_mask);
}

// ---------------------------------------------------------------------------
// Cell
// ---------------------------------------------------------------------------

// h = act(h + bias) over a cell's (N, H) output. float32 on AVX-512 uses the step
// kernel with K = 0 (exactly this epilogue, with SLEEF's vector tanh); the generic
// pass calls scalar tanh per element in this build.
template <typename T>
void cell_bias_act(Activation act, int64_t N, int64_t H, const T* bias, T* h) {
  if constexpr (std::is_same_v<T, float>) {
    if (elman_fast_path()) {
      avx512::StepArgs a;
      a.M = N;
      a.N = H;
      a.C = h;
      a.ldc = H;
      a.O = h;
      a.ldo = H;
      a.bias = bias;
      a.act = act;
      a.epilogue = avx512::Epilogue::Activate;
      avx512::step(a, 0, H);
      return;
    }
  }
  bias_act_rows<T>(act, N, H, bias, h, H, h, H);
}

// Rows and columns of the output per single-thread MKL call in the cell's forward
// (see there). Column blocks let a small batch use every thread too.
constexpr int64_t kCellRowBlock = 32;
constexpr int64_t kCellColBlock = 128;

at::Tensor rnn_cell_forward_cpu(const at::Tensor& input, const at::Tensor& hx,
                                const at::Tensor& w_ih, const at::Tensor& w_hh,
                                const std::optional<at::Tensor>& b_ih,
                                const std::optional<at::Tensor>& b_hh,
                                c10::string_view nonlinearity) {
  const char* op = "rnnfast.rnn_cell_forward";
  const CellSizes s = check_cell_args(op, input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity);
  if (is_reduced(input))
    return rnn_cell_forward_cpu(to_f32(input), to_f32(hx), to_f32(w_ih), to_f32(w_hh),
                                to_f32(b_ih), to_f32(b_hh), nonlinearity)
        .to(input.scalar_type());
  check_cpu_dtype(op, input);
  at::Tensor h = at::empty({s.N, s.H}, input.options());
  if (s.N == 0 || s.H == 0) return h;
  const at::Tensor x = input.contiguous(), h0 = hx.contiguous();
  const at::Tensor wi = w_ih.contiguous(), wh = w_hh.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnn_cell_forward_cpu", [&] {
    using T = scalar_t;
    std::vector<T> bias(s.H, T(0));
    if (s.has_bias) {
      const at::Tensor bi = b_ih->contiguous(), bh = b_hh->contiguous();
      for (const auto j : c10::irange(s.H))
        bias[j] = bi.const_data_ptr<T>()[j] + bh.const_data_ptr<T>()[j];
    }
    T* out = h.mutable_data_ptr<T>();
    // float32: the AVX-512 kernel would need W^T, a copy of both weights per call (more
    // than the product itself at small batch); MKL reads W in place. The output goes in
    // fixed blocks of rows x columns, one single-thread MKL call each, spread over
    // torch's threads: the blocks, hence the rounding, do not depend on the thread count.
    const bool by_blocks = std::is_same_v<T, float> && have_one_thread_blas();
    auto add_product = [&](int64_t K, const T* A, const T* W, T beta) {  // out (+)= A W^T
      if (!by_blocks) {
        gemm_any<T>(false, true, s.N, s.H, K, A, K, W, K, beta, out, s.H);
        return;
      }
      const int64_t grain = std::max<int64_t>(
          1, (1 << 19) / std::max<int64_t>(kCellRowBlock * kCellColBlock * K, 1));
      parallel_tiles(s.N, s.H, kCellRowBlock, kCellColBlock, grain,
                     [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
                       gemm_one_thread<T>(false, true, r1 - r0, c1 - c0, K, T(1), A + r0 * K, K,
                                          W + c0 * K, K, beta, out + r0 * s.H + c0, s.H);
                     });
    };
    add_product(s.I, x.const_data_ptr<T>(), wi.const_data_ptr<T>(), T(0));
    add_product(s.H, h0.const_data_ptr<T>(), wh.const_data_ptr<T>(), T(1));
    cell_bias_act<T>(s.act, s.N, s.H, bias.data(), out);
  });
  return h;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_cell_backward_cpu(
    const at::Tensor& grad_h, const at::Tensor& input, const at::Tensor& hx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& h, bool has_bias,
    c10::string_view nonlinearity, std::array<bool, 2> output_mask) {
  const char* op = "rnnfast._rnn_cell_backward";
  const CellSizes s = check_cell_args(op, input, hx, w_ih, w_hh, std::nullopt, std::nullopt,
                                      nonlinearity);
  TORCH_CHECK(grad_h.sizes().equals({s.N, s.H}) && grad_h.scalar_type() == input.scalar_type(),
              op, ": grad_h must be a ", input.scalar_type(), " tensor of shape [", s.N, ", ",
              s.H, "], got ", grad_h.scalar_type(), " ", grad_h.sizes());
  TORCH_CHECK(h.sizes().equals({s.N, s.H}) && h.scalar_type() == input.scalar_type(), op,
              ": h must be a ", input.scalar_type(), " tensor of shape [", s.N, ", ", s.H,
              "], got ", h.scalar_type(), " ", h.sizes());
  if (is_reduced(input)) {
    const auto dt = input.scalar_type();
    auto [gx, ghx, gwi, gwh, gb] =
        rnn_cell_backward_cpu(to_f32(grad_h), to_f32(input), to_f32(hx), to_f32(w_ih),
                              to_f32(w_hh), to_f32(h), has_bias, nonlinearity, output_mask);
    auto to_dt = [dt](const at::Tensor& t) { return t.defined() ? t.to(dt) : t; };
    return {to_dt(gx), to_dt(ghx), gwi.to(dt), gwh.to(dt), gb.to(dt)};
  }
  check_cpu_dtype(op, input);
  at::Tensor dz = grad_h.clone(at::MemoryFormat::Contiguous);
  // Undefined (None) where output_mask says nobody wants it.
  at::Tensor gx = output_mask[0] ? at::empty({s.N, s.I}, input.options()) : at::Tensor();
  at::Tensor ghx = output_mask[1] ? at::empty({s.N, s.H}, input.options()) : at::Tensor();
  at::Tensor gwi = at::empty({s.H, s.I}, input.options());
  at::Tensor gwh = at::empty({s.H, s.H}, input.options());
  at::Tensor gb = has_bias ? at::empty({s.H}, input.options()) : at::empty({0}, input.options());
  const at::Tensor x = input.contiguous(), h0 = hx.contiguous(), hc = h.contiguous();
  const at::Tensor wi = w_ih.contiguous(), wh = w_hh.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnn_cell_backward_cpu", [&] {
    using T = scalar_t;
    T* dzp = dz.mutable_data_ptr<T>();
    mul_act_grad_rows<T>(s.act, s.N, s.H, dzp, s.H, hc.const_data_ptr<T>(), s.H);
    if (gx.defined())
      gemm_any<T>(false, false, s.N, s.I, s.H, dzp, s.H, wi.const_data_ptr<T>(), s.I, T(0),
                  gx.mutable_data_ptr<T>(), s.I);
    if (ghx.defined())
      gemm_any<T>(false, false, s.N, s.H, s.H, dzp, s.H, wh.const_data_ptr<T>(), s.H, T(0),
                  ghx.mutable_data_ptr<T>(), s.H);
    gemm_any<T>(true, false, s.H, s.I, s.N, dzp, s.H, x.const_data_ptr<T>(), s.I, T(0),
            gwi.mutable_data_ptr<T>(), s.I);
    gemm_any<T>(true, false, s.H, s.H, s.N, dzp, s.H, h0.const_data_ptr<T>(), s.H, T(0),
            gwh.mutable_data_ptr<T>(), s.H);
  });
  if (has_bias) at::sum_out(gb, dz, {0});
  return {gx, ghx, gwi, gwh, gb};
}

}  // namespace

}  // namespace rnnfast::cpu

namespace rnnfast {

std::string cpu_kernels() {
  if (cpu::avx512::bf16_supported()) return "avx512_bf16";
  if (cpu::avx512::supported()) return "avx512";
  if (cpu::avx2::cell_rows() != nullptr) return "avx2";
  return "generic";
}

}  // namespace rnnfast

namespace rnnfast::cpu {

TORCH_LIBRARY_IMPL(rnnfast, CPU, m) {
  m.impl("rnn_forward", &rnn_forward_cpu);
  m.impl("_rnn_backward", &rnn_backward_cpu);
  m.impl("rnn_cell_forward", &rnn_cell_forward_cpu);
  m.impl("_rnn_cell_backward", &rnn_cell_backward_cpu);
}

}  // namespace rnnfast::cpu
