// Deterministic column sums for the bias gradients (db = sum over all rows of dZ):
// a fixed two-pass tree with no atomics, so results are bitwise reproducible.
// Pass 1: each block sums one chunk of rows for 32 columns; pass 2 adds the chunks
// of each column in order. The chunking depends only on the row count.
#include "../kernels/cuda_math.cuh"
#include "../kernels/rnn_cuda.cuh"

namespace rnnfast::cuda {
namespace {

constexpr int kCols = 32;      // columns per block (one warp across, coalesced)
constexpr int kRowLanes = 8;   // threads per column, each striding over the chunk's rows
constexpr int kFinalThreads = 256;

// ---------------------------------------------------------------------------
// CUDA kernels
// ---------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kCols* kRowLanes)
    column_sum_partial_kernel(const T* __restrict__ src, int64_t rows, int64_t cols, int64_t ld,
                              int64_t rows_per_chunk, acc_type<T>* __restrict__ partial) {
  using acc_t = acc_type<T>;
  __shared__ acc_t lanes[kRowLanes][kCols + 1];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  acc_t s = acc_t(0);
  if (c < cols) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kRowLanes) s += to_acc(src[r * ld + c]);
  }
  lanes[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    acc_t t = lanes[0][threadIdx.x];
#pragma unroll
    for (int k = 1; k < kRowLanes; ++k) t += lanes[k][threadIdx.x];
    partial[static_cast<int64_t>(blockIdx.y) * cols + c] = t;
  }
}

template <typename T>
__global__ void __launch_bounds__(kFinalThreads)
    column_sum_final_kernel(const acc_type<T>* __restrict__ partial, int64_t chunks, int64_t cols,
                            T* __restrict__ out, T* __restrict__ out2) {
  using acc_t = acc_type<T>;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kFinalThreads + threadIdx.x;
  if (c >= cols) return;
  acc_t s = acc_t(0);
  for (int64_t k = 0; k < chunks; ++k) s += partial[k * cols + c];
  const T v = from_acc<T>(s);
  out[c] = v;
  if (out2 != nullptr) out2[c] = v;
}

}  // namespace

// ---------------------------------------------------------------------------
// Kernel launcher
// ---------------------------------------------------------------------------

template <typename T>
cudaError_t column_sum(const T* src, int64_t rows, int64_t cols, int64_t ld, T* out, T* out2,
                       acc_type<T>* workspace, cudaStream_t stream) {
  if (cols <= 0) return cudaSuccess;
  const int64_t chunks = rows > 0 ? column_sum_chunks(rows) : 0;
  if (chunks > 0) {
    const dim3 grid(ceil_div(cols, kCols), static_cast<unsigned int>(chunks));
    column_sum_partial_kernel<T><<<grid, dim3(kCols, kRowLanes), 0, stream>>>(
        src, rows, cols, ld, column_sum_rows_per_chunk(rows), workspace);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  // With no rows the sums are zeros: the final pass adds no chunks.
  column_sum_final_kernel<T><<<ceil_div(cols, kFinalThreads), kFinalThreads, 0, stream>>>(
      workspace, chunks, cols, out, out2);
  return cudaGetLastError();
}

#define RNNFAST_INSTANTIATE(T)                                                         \
  template cudaError_t column_sum<T>(const T*, int64_t, int64_t, int64_t, T*, T*,     \
                                     acc_type<T>*, cudaStream_t);
RNNFAST_INSTANTIATE(float)
RNNFAST_INSTANTIATE(double)
RNNFAST_INSTANTIATE(__half)
RNNFAST_INSTANTIATE(__nv_bfloat16)
#undef RNNFAST_INSTANTIATE

}  // namespace rnnfast::cuda
