// Persistent recurrent kernels: all T steps of one layer (both directions) in one
// cooperative launch, W_hh kept in registers. API and data layout: the "Persistent
// recurrence" section of kernels/rnn_cuda.cuh.
//
// Work split. A direction's H hidden columns are cut into blocks of kCols = 8; block g
// owns columns c0 = 8g .. 8g+7 of every row. Its 256 threads split the contraction
// index k: thread i owns k = i, i + 256, ... (KK values, KK = ceil(H / 256) rounded
// up to a power of two), so it holds the 8 x KK weights W[c0 + c][k] (forward) or
// W[k][c0 + c] (backward, i.e. W^T) in registers. Per step and per chunk of 4 batch
// rows a thread loads its KK entries of each row's previous state (coalesced, one
// read of the state per block), forms 4 x 8 partial dot products, and the warp
// reduce-scatters them with shuffles so that lane l ends with the warp's sum for
// output (row l / 8, column l % 8). The 8 warps' sums meet in shared memory and are
// added in warp order by the thread that owns the output: thread i owns column
// c0 + i % 8 of rows i / 8 + 32e (e < 4), hence kPersistentMaxRows = 128.
//
// Step hand-off. Each direction has one 64-bit step counter. After writing its
// columns of a step, a block adds 1 to it (one release atomic by thread 0, after a
// block barrier); before step i+1 thread 0 of every block waits until the counter
// reaches G * (i+1), i.e. every block of the direction has finished step i (no block
// can add for step i+1 before that), then the block barriers. Each step writes its
// own rows of the output, so no step overwrites data another block may still read:
// one hand-off per step suffices. Data written by other blocks is read with
// ld.global.cg (L2), never through a possibly stale L1. Cooperative launch
// guarantees that all blocks are resident (no deadlock). Integer atomics only.
//
// Every sum runs in a fixed order (lanes by the shuffle tree, warps in index order),
// so results are bitwise reproducible and independent of scheduling.
#include "../kernels/activations.h"
#include "../kernels/cuda_math.cuh"
#include "../kernels/rnn_cuda.cuh"

namespace rnnfast::cuda {
namespace {

constexpr int kCols = kPersistentCols;
constexpr int kThreads = kPersistentThreads;
constexpr int kWarps = kThreads / 32;
constexpr int kChunkRows = 4;                              // rows per shuffle reduction
constexpr int kOutPerThread = kPersistentMaxRows * kCols / kThreads;  // 4
static_assert(kChunkRows * kCols == 32, "one reduce-scatter value per lane");
static_assert(kThreads % kCols == 0, "a thread's epilogue outputs share one column");

// Rows of the per-warp partial sums in shared memory: the chunk loop runs in pairs.
__host__ __device__ inline int64_t padded_rows(int64_t N) { return (N + 7) / 8 * 8; }

// ---------------------------------------------------------------------------
// Device helpers
// ---------------------------------------------------------------------------

__device__ __forceinline__ unsigned long long load_acquire(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void add_release(unsigned long long* p, unsigned long long v) {
  asm volatile("red.release.gpu.global.add.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

// An L2 load (ld.global.cg: no stale L1 line) of data other blocks write, as float.
// volatile + "memory": the compiler keeps it between the hand-off's barriers (the
// 16-bit __ldcg overloads are plain asm, which it may move).
__device__ __forceinline__ float load_cg(const float* p) {
  float v;
  asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ float load_cg(const __half* p) {
  unsigned short bits;
  asm volatile("ld.global.cg.b16 %0, [%1];" : "=h"(bits) : "l"(p) : "memory");
  return __half2float(__ushort_as_half(bits));
}
__device__ __forceinline__ float load_cg(const __nv_bfloat16* p) {
  unsigned short bits;
  asm volatile("ld.global.cg.b16 %0, [%1];" : "=h"(bits) : "l"(p) : "memory");
  return __bfloat162float(__ushort_as_bfloat16(bits));
}

__device__ __forceinline__ int64_t step_rows(const PersistentSequence& s, int64_t t) {
  return s.batch_sizes != nullptr ? s.batch_sizes[t] : s.N;
}
__device__ __forceinline__ int64_t step_offset(const PersistentSequence& s, int64_t t) {
  return s.offsets != nullptr ? s.offsets[t] : t * s.N;
}

// Block barrier that also waits until the direction's step counter reaches `target`.
__device__ __forceinline__ void wait_for_count(const unsigned long long* counter,
                                               unsigned long long target) {
  if (threadIdx.x == 0) {
    while (load_acquire(counter) < target) {
    }
  }
  __syncthreads();
}

// Counts this block's step as done: every thread's stores first (barrier), then the
// add, whose release is cumulative over the stores the barrier ordered before it.
__device__ __forceinline__ void signal_step(unsigned long long* counter) {
  __syncthreads();
  if (threadIdx.x == 0) add_release(counter, 1);
}

// One level of reduce_scatter32: a lane keeps the half of its first 2S values
// selected by bit S of its index and adds the partner lane's copy of that half.
template <int S>
__device__ __forceinline__ void reduce_scatter_level(float (&v)[32], int lane) {
  const bool upper = (lane & S) != 0;
#pragma unroll
  for (int i = 0; i < S; ++i) {
    const float send = upper ? v[i] : v[i + S];
    const float keep = upper ? v[i + S] : v[i];
    v[i] = keep + __shfl_xor_sync(0xffffffffu, send, S);
  }
}

// Lane l returns the sum over the warp's 32 lanes of v[l] (recursive halving, in a
// fixed order, so deterministic). Levels are separate instantiations so that every
// index is a compile-time constant and v stays in registers.
__device__ __forceinline__ float reduce_scatter32(float (&v)[32], int lane) {
  reduce_scatter_level<16>(v, lane);
  reduce_scatter_level<8>(v, lane);
  reduce_scatter_level<4>(v, lane);
  reduce_scatter_level<2>(v, lane);
  reduce_scatter_level<1>(v, lane);
  return v[0];
}

// The vector rows b0 .. b0+3 that the recurrence multiplies, restricted to this
// thread's k: row b < split comes from A (row stride ldA), row b >= split from B
// (stride ldB); rows >= rows and k >= H read as 0.
template <typename T, int KK>
__device__ __forceinline__ void load_rows(float (&v)[kChunkRows][KK], const T* A, int64_t ldA,
                                          int64_t split, const T* B, int64_t ldB, int64_t b0,
                                          int64_t rows, int64_t H) {
#pragma unroll
  for (int r = 0; r < kChunkRows; ++r) {
    const int64_t b = b0 + r;
    const T* src = nullptr;
    if (b < rows) src = b < split ? A + b * ldA : B + b * ldB;
#pragma unroll
    for (int j = 0; j < KK; ++j) {
      const int64_t k = static_cast<int64_t>(threadIdx.x) + static_cast<int64_t>(kThreads) * j;
      v[r][j] = (src != nullptr && k < H) ? load_cg(src + k) : 0.f;
    }
  }
}

// This warp's partial sums of the chunk's 4 x 8 outputs, reduce-scattered into
// red_warp[b * kCols + c] (b = b0 + lane / 8, c = lane % 8).
template <int KK>
__device__ __forceinline__ void reduce_chunk(const float (&v)[kChunkRows][KK],
                                             const float (&w)[kCols][KK], float* red_warp,
                                             int64_t b0) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  float acc[kChunkRows * kCols];
#pragma unroll
  for (int r = 0; r < kChunkRows; ++r) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      float s = 0.f;
#pragma unroll
      for (int j = 0; j < KK; ++j) s = fmaf(v[r][j], w[c][j], s);
      acc[r * kCols + c] = s;
    }
  }
  red_warp[b0 * kCols + lane] = reduce_scatter32(acc, lane);
}

// Per-warp partial sums of out[b][c] = sum_k vec[b][k] * w[c][k] for b < rows, into
// red[warp * red_stride + b * kCols + c]. The next chunk's loads are issued before
// the current chunk's arithmetic, so two chunks of L2 reads are in flight.
template <typename T, int KK>
__device__ __forceinline__ void block_matvec(const float (&w)[kCols][KK], const T* A, int64_t ldA,
                                             int64_t split, const T* B, int64_t ldB,
                                             int64_t rows, int64_t H, float* red,
                                             int64_t red_stride) {
  float* red_warp = red + (static_cast<int>(threadIdx.x) >> 5) * red_stride;
  float v0[kChunkRows][KK], v1[kChunkRows][KK];
  load_rows<T, KK>(v0, A, ldA, split, B, ldB, 0, rows, H);
#pragma unroll 1
  for (int64_t b0 = 0; b0 < rows; b0 += 2 * kChunkRows) {
    load_rows<T, KK>(v1, A, ldA, split, B, ldB, b0 + kChunkRows, rows, H);
    reduce_chunk<KK>(v0, w, red_warp, b0);
    if (b0 + kChunkRows < rows) {
      load_rows<T, KK>(v0, A, ldA, split, B, ldB, b0 + 2 * kChunkRows, rows, H);
      reduce_chunk<KK>(v1, w, red_warp, b0 + kChunkRows);
    }
  }
}

// Sum over the warps, in warp order, of output `o` (= b * kCols + c).
__device__ __forceinline__ float warp_sum(const float* red, int64_t red_stride, int64_t o) {
  float r = red[o];
#pragma unroll
  for (int wp = 1; wp < kWarps; ++wp) r += red[wp * red_stride + o];
  return r;
}

// Where a block sits: direction d, column block g of the direction's G, and the
// column c of this thread's epilogue outputs (rows tid / 8 + 32e).
struct BlockPlace {
  int G, d, g, tid;
  int64_t c, red_stride;
  bool col_ok;
  unsigned long long* counter;  // the direction's step counter
  __device__ explicit BlockPlace(const PersistentSequence& s)
      : G(static_cast<int>(gridDim.x / s.D)),
        d(static_cast<int>(blockIdx.x) / G),
        g(static_cast<int>(blockIdx.x) % G),
        tid(static_cast<int>(threadIdx.x)),
        c(static_cast<int64_t>(g) * kCols + tid % kCols),
        red_stride(padded_rows(s.N) * kCols),
        col_ok(c < s.H),
        counter(s.step_counters + d * kPersistentCounterStride) {}
  // The counter's value once every block of the direction has finished `steps` steps.
  __device__ unsigned long long count_after(int64_t steps) const {
    return static_cast<unsigned long long>(G) * static_cast<unsigned long long>(steps);
  }
  __device__ int64_t row(int e) const {
    return tid / kCols + static_cast<int64_t>(kThreads / kCols) * e;
  }
  // Offset of output (row b, column c) in the per-warp sums.
  __device__ int64_t out(int64_t b) const { return b * kCols + tid % kCols; }
};

// Where the forward's rows of step t start from: row b < split from row b of
// `from` (the neighbouring step in processing order: t-1 for direction 0, t+1 for
// direction 1), the others from hx[b]. The first step processed starts all from hx.
template <typename T>
struct PrevState {
  const T* from;
  int64_t split;
};

template <typename T>
__device__ __forceinline__ PrevState<T> prev_state(const PersistentSequence& s, const T* Y,
                                                   int64_t ld, int d, int64_t t, int64_t rows) {
  if (d == 0) {
    if (t > 0) return {Y + step_offset(s, t - 1) * ld, rows};
  } else if (t + 1 < s.T) {
    return {Y + step_offset(s, t + 1) * ld, step_rows(s, t + 1)};
  }
  return {nullptr, 0};
}

// This thread's slice of W (H x H, row-major): w[cc][j] = W[8g + cc][k] (forward) or
// W[k][8g + cc] (backward: W^T), k = tid + 256j; zero outside the matrix.
template <typename T, int KK>
__device__ __forceinline__ void load_weight_slice(float (&w)[kCols][KK], const T* W, int g,
                                                  int64_t H, bool transposed) {
#pragma unroll
  for (int cc = 0; cc < kCols; ++cc) {
    const int64_t col = static_cast<int64_t>(g) * kCols + cc;
#pragma unroll
    for (int j = 0; j < KK; ++j) {
      const int64_t k = static_cast<int64_t>(threadIdx.x) + static_cast<int64_t>(kThreads) * j;
      w[cc][j] = (col < H && k < H) ? to_acc(transposed ? W[k * H + col] : W[col * H + k]) : 0.f;
    }
  }
}

// ---------------------------------------------------------------------------
// CUDA kernels
// ---------------------------------------------------------------------------

// Register cap: two blocks per multiprocessor (bidirectional H <= 1024 on one GPU)
// where the weights fit in 128 registers, one block for the widest layers.
template <int KK>
constexpr int min_blocks_per_sm() {
  return KK <= 4 ? 2 : 1;
}

template <typename T, int KK>
__global__ void __launch_bounds__(kThreads, min_blocks_per_sm<KK>())
    persistent_forward_kernel(const PersistentForwardParams<T> p) {
  extern __shared__ float red[];
  const PersistentSequence& s = p.seq;
  const BlockPlace at(s);
  const int d = at.d;
  const int64_t H = s.H, ldy = s.D * H, steps = s.T, c = at.c;
  float w[kCols][KK];
  load_weight_slice<T, KK>(w, p.w_hh[d], at.g, H, /*transposed=*/false);
  // b_ih + b_hh summed first, as in the other kernels.
  const float bias =
      (at.col_ok && p.b_ih[d] != nullptr) ? to_acc(p.b_ih[d][c]) + to_acc(p.b_hh[d][c]) : 0.f;
  T* Y = p.y + d * H;
  const T* hx = p.hx[d];
  T* h_n = p.h_n[d];

#pragma unroll 1
  for (int64_t i = 0; i < steps; ++i) {
    const int64_t t = d == 0 ? i : steps - 1 - i;
    const int64_t rows = step_rows(s, t), off = step_offset(s, t);
    // This block's own inputs of the step, read before waiting on the other blocks.
    float proj[kOutPerThread];
#pragma unroll
    for (int e = 0; e < kOutPerThread; ++e) {
      const int64_t b = at.row(e);
      proj[e] = (at.col_ok && b < rows) ? load_cg(Y + (off + b) * ldy + c) : 0.f;
    }
    const PrevState<T> prev = prev_state<T>(s, Y, ldy, d, t, rows);
    // Rows b >= hn_start end their sequence here.
    const int64_t hn_start = d == 0 ? (t + 1 < steps ? step_rows(s, t + 1) : 0)
                                    : (t == 0 ? 0 : rows);
    if (i > 0) wait_for_count(at.counter, at.count_after(i));
    block_matvec<T, KK>(w, prev.from, ldy, prev.split, hx, H, rows, H, red, at.red_stride);
    __syncthreads();
#pragma unroll
    for (int e = 0; e < kOutPerThread; ++e) {
      const int64_t b = at.row(e);
      if (at.col_ok && b < rows) {
        const float z = (warp_sum(red, at.red_stride, at.out(b)) + proj[e]) + bias;
        const T h = from_acc<T>(activate<float>(s.act, z));
        Y[(off + b) * ldy + c] = h;
        if (b >= hn_start) h_n[b * H + c] = h;
      }
    }
    signal_step(at.counter);
  }
}

template <typename T, int KK>
__global__ void __launch_bounds__(kThreads, min_blocks_per_sm<KK>())
    persistent_backward_kernel(const PersistentBackwardParams<T> p) {
  extern __shared__ float red[];
  const PersistentSequence& s = p.seq;
  const BlockPlace at(s);
  const int d = at.d;
  const int64_t H = s.H, ld = s.D * H, steps = s.T, c = at.c;
  // W^T: the gradient reaching h_{t-1}[k] is sum_c dz_t[c] * W[c][k].
  float w[kCols][KK];
  load_weight_slice<T, KK>(w, p.w_hh[d], at.g, H, /*transposed=*/true);
  const T* Y = p.y + d * H;
  T* DZ = p.dz + d * H;
  const T* hx = p.hx[d];
  const T* grad_h_n = p.grad_h_n[d];
  T* grad_hx = p.grad_hx[d];
  T* h_prev = p.h_prev[d];

  // Steps in reverse order of the forward pass. At each, the block first finishes
  // the previous (later-in-BPTT-order) step tp: R = dz_tp @ W for its columns. R is
  // the carried gradient of the rows continuing into step t, and dL/dhx of rows of tp
  // that started there (reverse direction, packed input only).
#pragma unroll 1
  for (int64_t i = 0; i < steps; ++i) {
    const int64_t t = d == 0 ? steps - 1 - i : i;
    const int64_t rows = step_rows(s, t), off = step_offset(s, t);
    const int64_t tp = d == 0 ? t + 1 : t - 1;
    const int64_t rows_prev = i > 0 ? step_rows(s, tp) : 0;
    // The block's own inputs of the step, read before waiting on the other blocks;
    // and the state each row started from (for dW_hh), copied now.
    const PrevState<T> prev = prev_state<T>(s, Y, ld, d, t, rows);
    float dy[kOutPerThread], h[kOutPerThread], ghn[kOutPerThread];
#pragma unroll
    for (int e = 0; e < kOutPerThread; ++e) {
      const int64_t b = at.row(e);
      dy[e] = h[e] = ghn[e] = 0.f;
      if (at.col_ok && b < rows) {
        dy[e] = load_cg(DZ + (off + b) * ld + c);
        h[e] = load_cg(Y + (off + b) * ld + c);
        if (grad_h_n != nullptr) ghn[e] = to_acc(grad_h_n[b * H + c]);
        const T* src = b < prev.split ? prev.from + b * ld : hx + b * H;
        h_prev[(off + b) * H + c] = src[c];
      }
    }
    const T* A = i > 0 ? DZ + step_offset(s, tp) * ld : nullptr;
    if (i > 0) wait_for_count(at.counter, at.count_after(i));
    block_matvec<T, KK>(w, A, ld, rows_prev, A, ld, rows_prev, H, red, at.red_stride);
    __syncthreads();
#pragma unroll
    for (int e = 0; e < kOutPerThread; ++e) {
      const int64_t b = at.row(e);
      if (!at.col_ok) continue;
      if (b < rows) {
        // dL/dh_n enters where the row's sequence ends (no later step carries into it).
        const float carried = b < rows_prev ? warp_sum(red, at.red_stride, at.out(b))
                                            : ghn[e];
        DZ[(off + b) * ld + c] = from_acc<T>(apply_activation_grad<float>(s.act, dy[e] + carried, h[e]));
      } else if (b < rows_prev) {
        grad_hx[b * H + c] = from_acc<T>(warp_sum(red, at.red_stride, at.out(b)));
      }
    }
    signal_step(at.counter);
  }

  // The last step's gradient flows into hx.
  const int64_t t_last = d == 0 ? 0 : steps - 1;
  const int64_t rows_last = step_rows(s, t_last);
  const T* A = DZ + step_offset(s, t_last) * ld;
  wait_for_count(at.counter, at.count_after(steps));
  block_matvec<T, KK>(w, A, ld, rows_last, A, ld, rows_last, H, red, at.red_stride);
  __syncthreads();
#pragma unroll
  for (int e = 0; e < kOutPerThread; ++e) {
    const int64_t b = at.row(e);
    if (at.col_ok && b < rows_last)
      grad_hx[b * H + c] = from_acc<T>(warp_sum(red, at.red_stride, at.out(b)));
  }
}

// ---------------------------------------------------------------------------
// Kernel selection and launchers
// ---------------------------------------------------------------------------

// Weights per thread and column: the smallest power of two with 256 * KK >= H.
template <typename T>
const void* kernel_for(int64_t H, bool backward) {
#define RNNFAST_PICK(KK)                                                          \
  return backward ? reinterpret_cast<const void*>(persistent_backward_kernel<T, KK>) \
                  : reinterpret_cast<const void*>(persistent_forward_kernel<T, KK>)
  if (H <= kThreads) RNNFAST_PICK(1);
  if (H <= 2 * kThreads) RNNFAST_PICK(2);
  if (H <= 4 * kThreads) RNNFAST_PICK(4);
  RNNFAST_PICK(8);
#undef RNNFAST_PICK
}
static_assert(8 * kThreads == kPersistentMaxH, "KK = 8 covers the widest layer");

bool within_limits(const PersistentSequence& s) {
  return s.T >= 1 && s.N >= 1 && s.N <= kPersistentMaxRows && s.H >= 1 &&
         s.H <= kPersistentMaxH && (s.D == 1 || s.D == 2) && s.step_counters != nullptr;
}

template <typename T, typename Params>
cudaError_t launch(const Params& p, bool backward, cudaStream_t stream) {
  if (!within_limits(p.seq)) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned int>(persistent_blocks_per_direction(p.seq.H) * p.seq.D));
  const dim3 block(kThreads);
  Params copy = p;
  void* args[] = {&copy};
  return cudaLaunchCooperativeKernel(kernel_for<T>(p.seq.H, backward), grid, block, args,
                                     static_cast<size_t>(persistent_shared_bytes(p.seq.N)),
                                     stream);
}

}  // namespace

int64_t persistent_shared_bytes(int64_t N) {
  return kWarps * padded_rows(N) * kCols * static_cast<int64_t>(sizeof(float));
}

template <typename T>
cudaError_t persistent_capacity(int64_t N, int64_t H, int device, bool backward, int64_t* blocks) {
  *blocks = 0;
  if (N < 1 || N > kPersistentMaxRows || H < 1 || H > kPersistentMaxH) return cudaSuccess;
  int cooperative = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device);
  if (err != cudaSuccess || cooperative == 0) return err;
  err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, kernel_for<T>(H, backward), kThreads,
      static_cast<size_t>(persistent_shared_bytes(N)));
  if (err != cudaSuccess) return err;
  *blocks = static_cast<int64_t>(per_sm) * sms;
  return cudaSuccess;
}

template <typename T>
cudaError_t persistent_forward(const PersistentForwardParams<T>& p, cudaStream_t stream) {
  return launch<T>(p, false, stream);
}

template <typename T>
cudaError_t persistent_backward(const PersistentBackwardParams<T>& p, cudaStream_t stream) {
  return launch<T>(p, true, stream);
}

#define RNNFAST_INSTANTIATE(T)                                                                 \
  template cudaError_t persistent_capacity<T>(int64_t, int64_t, int, bool, int64_t*);         \
  template cudaError_t persistent_forward<T>(const PersistentForwardParams<T>&, cudaStream_t); \
  template cudaError_t persistent_backward<T>(const PersistentBackwardParams<T>&, cudaStream_t);
RNNFAST_INSTANTIATE(float)
RNNFAST_INSTANTIATE(__half)
RNNFAST_INSTANTIATE(__nv_bfloat16)
#undef RNNFAST_INSTANTIATE

}  // namespace rnnfast::cuda
