// AVX-512 kernel for one recurrent time step on the CPU (float32).
//
// A step of the recurrence is a small GEMM (batch rows x H) whose right-hand
// matrix, the recurrent weight, is the same for all T steps. Calling BLAS per step
// pays a call, packing and threading decision every step; this register-blocked
// kernel reads the weight straight from cache and applies the elementwise epilogue
// (bias + activation, or the activation's derivative) while the accumulators are
// still in registers: one pass over the step's output.
//
// Compiled with a function-level target attribute and chosen at run time, so the
// library still loads on CPUs without AVX-512 (they take the BLAS path).
#pragma once

#include <cstdint>

#include "../kernels/activations.h"

namespace rnnfast::cpu::avx512 {

// True when this CPU runs the kernels below.
bool supported();

enum class Epilogue {
  Activate,  // C = act(C + A @ B + bias)       (forward: C holds the input projection)
  ActGrad,   // C = (C + A @ B) * act'(Y)       (backward: C holds dY, Y the step's output)
  Store,     // C = A @ B
  Accumulate,  // C += A @ B
};

// One step on columns [n_begin, n_end) of C (M x N); A is M x K (row stride lda),
// B is K x N row-major (row stride ldb). K may be 0 (the epilogue alone runs).
// n_begin must be a multiple of 16. Single-threaded: callers split columns.
struct StepArgs {
  int64_t M = 0, N = 0, K = 0;
  const float* A = nullptr;
  int64_t lda = 0;      // stride between rows of A
  int64_t a_kstride = 1;  // stride between columns of A (1: row-major; lda: a transposed view)
  const float* B = nullptr;
  int64_t ldb = 0;
  float* C = nullptr;
  int64_t ldc = 0;
  const float* Y = nullptr;  // ActGrad only
  int64_t ldy = 0;
  const float* bias = nullptr;  // Activate only; length N
  Activation act = Activation::Tanh;
  Epilogue epilogue = Epilogue::Store;
};

void step(const StepArgs& args, int64_t n_begin, int64_t n_end);

// Whole GEMM C (+)= A @ B (M x N), A element (m, k) at A[m * a_rowstride + k * a_kstride]
// (best with a_kstride == 1: a transposed A costs a cache line per broadcast),
// B K x N row-major. Cache-blocked and spread over torch's threads by output tile:
// every element is accumulated in the same k order whatever the thread count, so
// the result does not depend on it.
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rowstride,
          int64_t a_kstride, const float* B, int64_t ldb, float* C, int64_t ldc,
          bool accumulate);

}  // namespace rnnfast::cpu::avx512
