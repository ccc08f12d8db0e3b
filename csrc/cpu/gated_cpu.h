// CPU time loops of the gated cells (LSTM, GRU), for float and double. The Elman
// cell keeps its fused AVX-512 loops in rnn_cpu.cpp; both are driven from there.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "../rnn_args.h"

namespace rnnfast::cpu {

// Forward of all layers. hx / h_n: one tensor per state; workspace as allocated by
// allocate_forward_outputs (gates and c / hn only with s.train).
template <typename T>
void gated_forward(const RnnSizes& s, const at::Tensor& x2d, const std::vector<at::Tensor>& hx,
                   const std::vector<at::Tensor>& weights,
                   const std::optional<at::Tensor>& masks, const at::Tensor& out2d,
                   const std::vector<at::Tensor>& h_n, const std::vector<at::Tensor>& workspace);

// BPTT of all layers. dY: the (rows, D*P) output gradient, overwritten. grad_h_n:
// one entry per state, undefined where None.
template <typename T>
void gated_backward(const RnnSizes& s, const at::Tensor& x2d, const std::vector<at::Tensor>& hx,
                    const std::vector<at::Tensor>& weights,
                    const std::optional<at::Tensor>& masks, const at::Tensor& out2d,
                    const std::vector<at::Tensor>& workspace, at::Tensor dY,
                    const std::vector<at::Tensor>& grad_h_n, const at::Tensor& grad_x2d,
                    const std::vector<at::Tensor>& grad_hx,
                    const std::vector<at::Tensor>& grad_weights);

}  // namespace rnnfast::cpu
