// AVX-512 kernels for one recurrent time step on the CPU (float32 and bfloat16).
//
// A step of the recurrence is a small GEMM (batch rows x H) whose right-hand
// matrix, the recurrent weight, is the same for all T steps. Calling BLAS per step
// pays a call, packing and threading decision every step; this register-blocked
// kernel reads the weight straight from cache and applies the elementwise epilogue
// (bias + activation, or the activation's derivative) while the accumulators are
// still in registers: one pass over the step's output.
//
// The bfloat16 variant multiplies bf16 operands with AVX512-BF16 `vdpbf16ps`
// (two products per float32 lane, accumulated in float32); its right-hand matrix
// is packed in k-pairs (see pack_pairs), and its epilogue rounds to bf16 exactly as
// c10::BFloat16 does (round to nearest even, NaN -> 0x7FC0).
//
// Compiled with function-level target attributes and chosen at run time, so the
// library still loads on CPUs without AVX-512 (they take the BLAS path) or without
// AVX512-BF16 (bf16 then runs the float32 kernels on upcast copies).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>

#include "../kernels/activations.h"

namespace rnnfast::cpu::avx512 {

// True when this CPU runs the float32 kernels below.
bool supported();
// True when it also runs the bfloat16 ones (AVX512-BF16).
bool bf16_supported();

enum class Epilogue {
  Activate,    // O = act(C + A @ B + bias)   (forward: C holds the input projection)
  ActGrad,     // C = (C + A @ B) * act'(Y)   (backward: C holds dY, Y the step's output);
               //     also O = C rounded, when O is set
  Store,       // C = A @ B
  Accumulate,  // C += A @ B
};

// One step on columns [n_begin, n_end) of C (M x N); A is M x K (row stride lda).
// In = float: B is K x N row-major (row stride ldb).
// In = BFloat16: B is packed by pack_pairs (ldb = elements per k-pair row, >= 2N) and A
// must be row-major (a_kstride 1).
// C is float32 whatever In is; O and Y have type In. K may be 0 (the epilogue alone
// runs). n_begin must be a multiple of 16. Single-threaded: callers split columns.
template <typename In>
struct StepArgsT {
  int64_t M = 0, N = 0, K = 0;
  const In* A = nullptr;
  int64_t lda = 0;        // stride between rows of A
  int64_t a_kstride = 1;  // stride between columns of A (float only; lda: a transposed view)
  const In* B = nullptr;
  int64_t ldb = 0;
  float* C = nullptr;
  int64_t ldc = 0;
  In* O = nullptr;  // Activate: the output (may equal C for float); ActGrad: optional copy
  int64_t ldo = 0;
  const In* Y = nullptr;  // ActGrad only
  int64_t ldy = 0;
  const float* bias = nullptr;  // Activate only; length N
  Activation act = Activation::Tanh;
  Epilogue epilogue = Epilogue::Store;
};
using StepArgs = StepArgsT<float>;
using StepArgsBf16 = StepArgsT<c10::BFloat16>;

void step(const StepArgs& args, int64_t n_begin, int64_t n_end);
void step(const StepArgsBf16& args, int64_t n_begin, int64_t n_end);

// Whole GEMM C (+)= A @ B (M x N), A element (m, k) at A[m * a_rowstride + k * a_kstride]
// (best with a_kstride == 1: a transposed A costs a cache line per broadcast),
// B K x N row-major. Cache-blocked and spread over torch's threads by output tile:
// every element is accumulated in the same k order whatever the thread count, so
// the result does not depend on it.
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rowstride,
          int64_t a_kstride, const float* B, int64_t ldb, float* C, int64_t ldc,
          bool accumulate);

// The same with bf16 operands and a float32 C: A row-major (row stride lda), B packed
// by pack_pairs with row stride ldb (elements per k-pair row).
void gemm(int64_t M, int64_t N, int64_t K, const c10::BFloat16* A, int64_t lda,
          const c10::BFloat16* B, int64_t ldb, float* C, int64_t ldc, bool accumulate);

// Packs the K x N matrix B, element (k, n) at S[k * k_stride + n * n_stride], for the
// bf16 kernels: P[(k / 2) * 2N + 2n + k % 2] = B(k, n), and 0 for k == K when K is
// odd. P holds ceil(K / 2) * 2N elements. Spread over torch's threads.
void pack_pairs(int64_t K, int64_t N, const c10::BFloat16* S, int64_t k_stride,
                int64_t n_stride, c10::BFloat16* P);

// D (C x R, row-major) = S^T, S being R x C with row stride ld. Spread over threads.
void transpose(int64_t R, int64_t C, const c10::BFloat16* S, int64_t ld, c10::BFloat16* D);

}  // namespace rnnfast::cpu::avx512
