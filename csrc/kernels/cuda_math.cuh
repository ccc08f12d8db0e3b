// Device-side helpers shared by the rnnfast CUDA kernels: conversion between the
// storage types and their arithmetic type (acc_type in rnn_cuda.cuh), written with
// the explicit intrinsics so that they compile under torch's
// __CUDA_NO_HALF_CONVERSIONS__ / __CUDA_NO_BFLOAT16_CONVERSIONS__ flags.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <utility>

#include "rnn_cuda.cuh"

namespace rnnfast::cuda {

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_acc(acc_type<T> x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <>
__device__ __forceinline__ double from_acc<double>(double x) { return x; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

inline unsigned int ceil_div(int64_t a, int64_t b) {
  return static_cast<unsigned int>((a + b - 1) / b);
}

// The grid of the per-step pointwise kernels: a block covers 32 columns (one warp,
// coalesced along the hidden dimension) and 8 rows; the grid covers the columns
// exactly and strides over the rows.
constexpr int kBlockCols = 32;
constexpr int kBlockRows = 8;
constexpr int64_t kMaxGridRows = 65535;

inline dim3 step_grid(int64_t rows, int64_t cols) {
  const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
  const int64_t grid_rows = blocks < kMaxGridRows ? blocks : kMaxGridRows;
  return dim3(ceil_div(cols, kBlockCols), static_cast<unsigned int>(grid_rows));
}

// Launches a per-step pointwise kernel over rows x cols (step_grid, 32 x 8 blocks) on
// stream; an empty step launches nothing.
template <typename... Params, typename... Args>
cudaError_t launch_step(void (*kernel)(Params...), int64_t rows, int64_t cols,
                        cudaStream_t stream, Args&&... args) {
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  kernel<<<step_grid(rows, cols), dim3(kBlockCols, kBlockRows), 0, stream>>>(
      std::forward<Args>(args)...);
  return cudaGetLastError();
}

}  // namespace rnnfast::cuda
