// Activation functions of the Elman RNN and their derivatives, written once for
// the CPU and CUDA kernels. The derivatives are expressed through the
// activation's *output* h (what the forward pass saves), not its input.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define RNNFAST_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define RNNFAST_HOST_DEVICE inline
#endif

namespace rnnfast {

enum class Activation { Tanh = 0, Relu = 1 };

template <typename T>
RNNFAST_HOST_DEVICE T activate(Activation act, T z) {
  if (act == Activation::Tanh) return tanh(z);
  // NaN must propagate as in torch.relu, so test for "not > 0" explicitly.
  return (z > T(0) || z != z) ? z : T(0);
}

// grad * act'(z) given h = act(z), as torch computes it. For relu that is torch's
// threshold_backward: zero where h <= 0, the gradient itself elsewhere (also where h is
// NaN), a select rather than a product, so a NaN/inf gradient at h <= 0 gives 0.
template <typename T>
RNNFAST_HOST_DEVICE T apply_activation_grad(Activation act, T grad, T h) {
  if (act == Activation::Tanh) return grad * (T(1) - h * h);
  return h <= T(0) ? T(0) : grad;
}

}  // namespace rnnfast
