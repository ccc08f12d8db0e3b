// The CPU sequence driver (see sequence_cpu.h).
#include "sequence_cpu.h"

#include <c10/util/irange.h>

#include "cpu_common.h"
#include "small_gemm.h"

namespace rnnfast::cpu {

bool weights_in_place(const RnnSizes& s) {
  return !is_elman(s.cell) && s.T < kTransposeMinSteps && have_one_thread_blas();
}

bool pack_step_weights(const RnnSizes& s) {
  return s.T >= kTransposeMinSteps && avx2::small_gemm_packed() && !avx512::supported();
}

namespace {

template <typename T>
std::unique_ptr<CellLoops<T>> make_cell_loops(const RnnSizes& s,
                                              const std::vector<at::Tensor>& weights) {
  return is_elman(s.cell) ? make_elman_loops<T>(s, weights) : make_gated_loops<T>(s, weights);
}

// This layer's block of each state tensor ((NL*D, N, width): h is P wide, c H wide).
template <typename Ptr, typename Tensors, typename Get>
void state_blocks(const RnnSizes& s, int64_t layer, const Tensors& states, Ptr* dst, Get get) {
  for (const auto k : c10::irange(s.states())) {
    const int64_t width = k == 0 ? s.P : s.H;
    dst[k] = states[k].defined() ? get(states[k]) + layer * s.D * s.N * width : nullptr;
  }
}

}  // namespace

template <typename T>
void sequence_forward(const RnnSizes& s, const at::Tensor& x2d, const std::vector<at::Tensor>& hx,
                      const std::vector<at::Tensor>& weights,
                      const std::optional<at::Tensor>& masks, const at::Tensor& out2d,
                      const std::vector<at::Tensor>& h_n,
                      const std::vector<at::Tensor>& workspace) {
  const int64_t GH = s.G * s.H;
  const bool elman = is_elman(s.cell);
  const auto loops = make_cell_loops<T>(s, weights);
  // A gated cell's gates and c / hn: saved in the workspace with train, else scratch
  // reused by every layer (no gates where the loops project the input themselves). The
  // Elman cell computes in its output.
  at::Tensor gates_scratch, aux_scratch;
  if (!elman && !s.train) {
    if (!loops->projects_input()) gates_scratch = at::empty({s.rows, s.D * GH}, x2d.options());
    aux_scratch = at::empty({s.rows, s.D * s.H}, x2d.options());
  }
  for (const auto layer : c10::irange(s.NL)) {
    const at::Tensor X = layer_input(layer, x2d, workspace[0], masks).contiguous();
    const at::Tensor Y = layer + 1 == s.NL ? out2d : workspace[0][layer];
    const int64_t I_l = s.layer_input_size(layer);
    LayerBuffers<T> b;
    b.layer = layer;
    b.X = X.const_data_ptr<T>();
    b.Y = Y.mutable_data_ptr<T>();
    if (elman) {
      b.gates = b.Y;
    } else {
      const at::Tensor& gates = s.train ? workspace[1][layer] : gates_scratch;
      b.gates = gates.defined() ? gates.mutable_data_ptr<T>() : nullptr;
      b.aux = (s.train ? workspace[2][layer] : aux_scratch).mutable_data_ptr<T>();
    }
    state_blocks(s, layer, hx, b.hx, [](const at::Tensor& t) { return t.const_data_ptr<T>(); });
    state_blocks(s, layer, h_n, b.h_n, [](const at::Tensor& t) { return t.mutable_data_ptr<T>(); });
    const int64_t D_projected = loops->projects_input() ? 0 : s.D;  // here, not in the loops
    for (const auto d : c10::irange(D_projected)) {
      const T* w_ih = weights[s.weight_index(layer, d, 0)].const_data_ptr<T>();
      if (weights_in_place(s))
        gemm_sized<T>(false, true, s.rows, GH, I_l, T(1), X.const_data_ptr<T>(), I_l, w_ih, I_l,
                      T(0), b.gates + d * GH, s.D * GH);
      else
        gemm_any<T>(false, true, s.rows, GH, I_l, X.const_data_ptr<T>(), I_l, w_ih, I_l, T(0),
                    b.gates + d * GH, s.D * GH);
    }
    loops->forward(b);
  }
}

template <typename T>
void sequence_backward(const RnnSizes& s, const at::Tensor& x2d,
                       const std::vector<at::Tensor>& hx, const std::vector<at::Tensor>& weights,
                       const std::optional<at::Tensor>& masks, const at::Tensor& out2d,
                       const std::vector<at::Tensor>& workspace, at::Tensor dY,
                       const std::vector<at::Tensor>& grad_h_n, const at::Tensor& grad_x2d,
                       const std::vector<at::Tensor>& grad_hx,
                       const std::vector<at::Tensor>& grad_weights,
                       std::array<bool, 2> output_mask) {
  const int64_t H = s.H, P = s.P, GH = s.G * s.H;
  const bool elman = is_elman(s.cell);
  const auto loops = make_cell_loops<T>(s, weights);
  for (int64_t layer = s.NL - 1; layer >= 0; --layer) {
    const at::Tensor X = layer_input(layer, x2d, workspace[0], masks).contiguous();
    const at::Tensor Y = layer + 1 == s.NL ? out2d : workspace[0][layer];
    const int64_t I_l = s.layer_input_size(layer);
    at::Tensor dX = layer == 0 ? grad_x2d : at::empty({s.rows, I_l}, x2d.options());
    LayerBuffers<T> b;
    b.layer = layer;
    b.Y = const_cast<T*>(Y.const_data_ptr<T>());  // read only in the backward
    b.gates = elman ? b.Y : const_cast<T*>(workspace[1][layer].const_data_ptr<T>());
    b.aux = elman ? nullptr : const_cast<T*>(workspace[2][layer].const_data_ptr<T>());
    b.dY = dY.mutable_data_ptr<T>();
    b.need_grad_hx = output_mask[1];
    state_blocks(s, layer, hx, b.hx, [](const at::Tensor& t) { return t.const_data_ptr<T>(); });
    state_blocks(s, layer, grad_h_n, b.grad_h_n,
                 [](const at::Tensor& t) { return t.const_data_ptr<T>(); });
    state_blocks(s, layer, grad_hx, b.grad_hx,
                 [](const at::Tensor& t) { return t.mutable_data_ptr<T>(); });

    loops->backward(b, [&](int64_t d, const GateGrads<T>& g) {
      gemm_any<T>(true, false, GH, I_l, s.rows, g.dGW, g.ldW, X.const_data_ptr<T>(), I_l, T(0),
                  grad_weights[s.weight_index(layer, d, 0)].mutable_data_ptr<T>(), I_l);
      gemm_any<T>(true, false, GH, P, s.rows, g.dGR, g.ldR, g.h_prev, P, T(0),
                  grad_weights[s.weight_index(layer, d, 1)].mutable_data_ptr<T>(), P);
      if (s.has_biases) {
        at::Tensor db_ih = grad_weights[s.weight_index(layer, d, 2)];
        at::Tensor db_hh = grad_weights[s.weight_index(layer, d, 3)];
        at::sum_out(db_ih, view_2d(const_cast<T*>(g.dGW), s.rows, GH, g.ldW), {0});
        if (g.dGR == g.dGW) db_hh.copy_(db_ih);
        else at::sum_out(db_hh, view_2d(const_cast<T*>(g.dGR), s.rows, GH, g.ldR), {0});
      }
      if (s.has_proj)
        gemm_any<T>(true, false, P, H, s.rows, g.dH, g.ldH, g.m, H, T(0),
                    grad_weights[s.w_hr_index(layer, d)].mutable_data_ptr<T>(), H);
      if (layer > 0 || output_mask[0])
        gemm_any<T>(false, false, s.rows, I_l, GH, g.dGW, g.ldW,
                    weights[s.weight_index(layer, d, 0)].const_data_ptr<T>(), I_l,
                    d == 0 ? T(0) : T(1), dX.mutable_data_ptr<T>(), I_l);
    });
    if (layer > 0) {
      // The layer below's output gradient; dropout's backward is the same mask.
      if (masks.has_value() && masks->defined()) dX.mul_((*masks)[layer - 1]);
      dY = dX;
    }
  }
}

#define RNNFAST_INSTANTIATE(T)                                                                   \
  template void sequence_forward<T>(                                                             \
      const RnnSizes&, const at::Tensor&, const std::vector<at::Tensor>&,                        \
      const std::vector<at::Tensor>&, const std::optional<at::Tensor>&, const at::Tensor&,       \
      const std::vector<at::Tensor>&, const std::vector<at::Tensor>&);                           \
  template void sequence_backward<T>(                                                            \
      const RnnSizes&, const at::Tensor&, const std::vector<at::Tensor>&,                        \
      const std::vector<at::Tensor>&, const std::optional<at::Tensor>&, const at::Tensor&,       \
      const std::vector<at::Tensor>&, at::Tensor, const std::vector<at::Tensor>&,                \
      const at::Tensor&, const std::vector<at::Tensor>&, const std::vector<at::Tensor>&,         \
      std::array<bool, 2>);
RNNFAST_INSTANTIATE(float)
RNNFAST_INSTANTIATE(double)
#undef RNNFAST_INSTANTIATE

}  // namespace rnnfast::cpu
