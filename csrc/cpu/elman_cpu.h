// The Elman cell's CPU pieces beyond its time loops (which serve the sequence
// driver through make_elman_loops, sequence_cpu.h): the pointwise passes the one-step
// op shares, and the bfloat16 kernels for AVX512-BF16 CPUs.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "../kernels/activations.h"
#include "../rnn_args.h"

namespace rnnfast::cpu {

// float32 uses the fused AVX-512 step kernels on this CPU.
bool elman_fast_path();

// h[r, :] = act(z[r, :] + bias) for r < nrows. z and h may alias (in place).
template <typename T>
void bias_act_rows(Activation act, int64_t nrows, int64_t H, const T* bias, const T* z,
                   int64_t ldz, T* h, int64_t ldh);

// dz[r, :] = dz[r, :] * act'(h[r, :]) for r < nrows (a select for relu, as in torch).
template <typename T>
void mul_act_grad_rows(Activation act, int64_t nrows, int64_t H, T* dz, int64_t ldz, const T* h,
                       int64_t ldh);

// bfloat16 input on a CPU with AVX512-BF16: the bf16 kernels below.
bool use_bf16_path(const at::Tensor& input);

void elman_forward_bf16(const RnnSizes& s, const at::Tensor& x2d, const at::Tensor& hx,
                        const std::vector<at::Tensor>& weights,
                        const std::optional<at::Tensor>& masks, const at::Tensor& out2d,
                        const at::Tensor& h_n, const at::Tensor& workspace);

// dZ: float32 (rows, D*H), the output gradient; ghn: float32 h_n gradient or undefined.
void elman_backward_bf16(const RnnSizes& s, const at::Tensor& x2d, const at::Tensor& hx,
                         const std::vector<at::Tensor>& weights,
                         const std::optional<at::Tensor>& masks, const at::Tensor& out2d,
                         const at::Tensor& workspace, at::Tensor dZ, const at::Tensor& ghn,
                         const at::Tensor& grad_x2d, const at::Tensor& grad_hx,
                         const std::vector<at::Tensor>& grad_weights);

}  // namespace rnnfast::cpu
