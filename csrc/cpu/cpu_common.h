// Helpers shared by the CPU kernels.
#pragma once

#include <ATen/ATen.h>

#include <cstring>
#include <vector>

#include "blas.h"
#include "step_avx512.h"

namespace rnnfast::cpu {

// Elementwise passes below this many elements stay on the calling thread: a
// fork/join costs more than the work.
constexpr int64_t kParallelGrain = 32768;

// dst (K x N, row-major) = src^T, src being N x K with row stride ld; in 32 x 32
// tiles so that both the reads and the strided writes stay in L1.
template <typename T>
inline void transpose_to(const T* src, int64_t ld, int64_t N, int64_t K, T* dst) {
  constexpr int64_t kTile = 32;
  for (int64_t n0 = 0; n0 < N; n0 += kTile)
    for (int64_t k0 = 0; k0 < K; k0 += kTile)
      for (int64_t n = n0; n < std::min(N, n0 + kTile); ++n)
        for (int64_t k = k0; k < std::min(K, k0 + kTile); ++k) dst[k * N + n] = src[n * ld + k];
}

// Every GEMM of the kernels goes through here. float32 on AVX-512 CPUs with a
// row-major A uses rnnfast's blocked kernel (measured 72-85 GFLOP/s per core here
// against MKL's 50-68 on this AMD CPU); a transposed A (the dW = dZ^T X GEMMs with
// their long K) and other dtypes use BLAS. A transposed B is copied to K x N first
// (cache-blocked): keeping these GEMMs off BLAS keeps float32 outputs independent of
// the thread count. alpha is always 1; beta is 0 or 1.
template <typename T>
inline void gemm_any(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A,
              int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>) {
    if (avx512::supported() && !trans_a) {
      std::vector<float> Bt;  // (a copy per call: keep W^T out of per-step calls)
      const float* Bkn = B;
      int64_t ldb_kn = ldb;
      if (trans_b) {  // B is stored N x K: make the K x N copy the kernel reads
        Bt.resize(K * N);
        transpose_to(B, ldb, N, K, Bt.data());
        Bkn = Bt.data();
        ldb_kn = N;
      }
      avx512::gemm(M, N, K, A, lda, 1, Bkn, ldb_kn, C, ldc, beta != 0.f);
      return;
    }
  }
  gemm<T>(trans_a, trans_b, M, N, K, T(1), A, lda, B, ldb, beta, C, ldc);
}

// dst[r, :] (+)= src[r, :] for r < nrows.
template <typename T>
void copy_rows(int64_t nrows, int64_t H, const T* src, int64_t lds, T* dst, int64_t ldd,
               bool accumulate) {
  for (int64_t r = 0; r < nrows; ++r) {
    if (accumulate) {
      for (int64_t j = 0; j < H; ++j) dst[r * ldd + j] += src[r * lds + j];
    } else {
      std::memcpy(dst + r * ldd, src + r * lds, sizeof(T) * H);
    }
  }
}

// 2-D tensor view of raw memory with row stride ld, for the few ATen calls made
// outside the time loop.
template <typename T>
at::Tensor view_2d(T* data, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(data, {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

inline void check_cpu_dtype(const char* op, const at::Tensor& input) {
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
              ": the CPU kernels support float32 and float64 inputs, got ", input.scalar_type());
}

// float16 (and bfloat16 on CPUs without AVX512-BF16) run the float32 kernels on
// upcast copies: every product is
// accumulated in float32 and the hidden state stays float32 along the sequence;
// only the returned tensors are rounded to the input's dtype.
inline bool is_reduced(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}
inline at::Tensor to_f32(const at::Tensor& t) { return t.to(at::kFloat); }
inline std::optional<at::Tensor> to_f32(const std::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return t;
  return t->to(at::kFloat);
}
inline std::vector<at::Tensor> to_f32(at::TensorList ts) {
  std::vector<at::Tensor> out;
  for (const auto& t : ts) out.push_back(t.to(at::kFloat));
  return out;
}

inline c10::List<std::optional<at::Tensor>> to_f32(
    const c10::List<std::optional<at::Tensor>>& ts) {
  c10::List<std::optional<at::Tensor>> out;
  for (size_t i = 0; i < ts.size(); ++i) out.push_back(to_f32(ts.get(i)));
  return out;
}

}  // namespace rnnfast::cpu
