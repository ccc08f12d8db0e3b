// Row-major GEMM on raw pointers for the CPU kernels.
//
// The time loop calls a GEMM per step; going through at::mm there would cost a
// dispatcher call and a TensorImpl allocation per step. torch's x86 wheels link
// MKL statically and export its Fortran BLAS symbols, so we call those directly
// (declared weak: a torch built without MKL still loads rnnfast, and we fall back
// to at::mm_out on tensors wrapping the same memory).
#pragma once

#include <ATen/ATen.h>
#include <algorithm>
#include <cstdint>

#include "small_gemm.h"

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc) __attribute__((weak));
// MKL's per-thread override of its thread count (0 restores the global setting).
// (MKL_Set_Num_Threads_Local is the C entry; the lower-case name is the Fortran one.)
int MKL_Set_Num_Threads_Local(int nt) __attribute__((weak));
}

namespace rnnfast::cpu {

inline bool have_fast_blas() { return sgemm_ != nullptr && dgemm_ != nullptr; }

namespace detail {

template <typename T>
void gemm_fallback(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
                   const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  // op(A) is M x K; stored row-major as (M x K, lda) or transposed as (K x M, lda).
  at::Tensor a = trans_a ? at::from_blob(const_cast<T*>(A), {K, M}, {lda, 1}, opts).t()
                         : at::from_blob(const_cast<T*>(A), {M, K}, {lda, 1}, opts);
  at::Tensor b = trans_b ? at::from_blob(const_cast<T*>(B), {N, K}, {ldb, 1}, opts).t()
                         : at::from_blob(const_cast<T*>(B), {K, N}, {ldb, 1}, opts);
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (beta == T(0)) {
    at::mm_out(c, a, b);
    if (alpha != T(1)) c.mul_(alpha);
  } else {
    c.addmm_(a, b, beta, alpha);
  }
}

}  // namespace detail

// C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C, all row-major with row
// strides lda/ldb/ldc. beta == 0 overwrites C (its old contents are ignored).
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "gemm: float or double");
  if (M == 0 || N == 0) return;
  if (K == 0) {  // BLAS would scale C by beta; make beta == 0 mean "write zeros" explicitly.
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  constexpr int64_t kIntMax = 2147483647;
  const bool fits_int = M <= kIntMax && N <= kIntMax && K <= kIntMax && lda <= kIntMax &&
                        ldb <= kIntMax && ldc <= kIntMax;
  if (!have_fast_blas() || !fits_int) {
    detail::gemm_fallback<T>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
  const char ta = trans_b ? 'T' : 'N';
  const char tb = trans_a ? 'T' : 'N';
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  // Column-major leading dimensions must be >= the number of rows of each stored matrix.
  const int ld_b_op = static_cast<int>(std::max<int64_t>(ldb, trans_b ? K : N));
  const int ld_a_op = static_cast<int>(std::max<int64_t>(lda, trans_a ? M : K));
  const int ld_c = static_cast<int>(std::max<int64_t>(ldc, N));
  if constexpr (std::is_same_v<T, float>) {
    sgemm_(&ta, &tb, &m, &n, &k, &alpha, B, &ld_b_op, A, &ld_a_op, &beta, C, &ld_c);
  } else {
    dgemm_(&ta, &tb, &m, &n, &k, &alpha, B, &ld_b_op, A, &ld_a_op, &beta, C, &ld_c);
  }
}

// gemm() on one MKL thread, whatever torch's thread count: for small products, whose
// results must not depend on the thread count. Only when MKL is there. float32 products
// of a few rows with B stored transposed (a weight read in place) run on the AVX2 small
// kernel instead, where the CPU has one (small_gemm.h).
inline bool have_one_thread_blas() {
  return have_fast_blas() && MKL_Set_Num_Threads_Local != nullptr;
}

template <typename T>
void gemm_one_thread(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
                     const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C,
                     int64_t ldc) {
  if constexpr (std::is_same_v<T, float>) {
    static const SmallGemmBt small_bt = avx2::small_gemm_bt();
    if (small_bt && !trans_a && trans_b && M <= kSmallGemmMaxRows && alpha == 1.f &&
        (beta == 0.f || beta == 1.f)) {
      small_bt(M, N, K, A, lda, B, ldb, C, ldc, beta == 1.f);
      return;
    }
  }
  const int previous = MKL_Set_Num_Threads_Local(1);
  gemm<T>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  MKL_Set_Num_Threads_Local(previous);
}

// Products below this many multiply-adds run on one MKL thread (a fork/join costs more
// than it saves, and their results then do not depend on the thread count); larger
// ones on torch's threads.
inline constexpr int64_t kOneThreadFlops = int64_t(1) << 20;

template <typename T>
void gemm_sized(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
                const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M * N * K < kOneThreadFlops && have_one_thread_blas())
    gemm_one_thread<T>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else
    gemm<T>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace rnnfast::cpu
