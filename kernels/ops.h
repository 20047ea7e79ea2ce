// kernels/ops.h — the index of the hand-written kernels: each launcher below, by the file that holds its
// kernel (forward beside backward, launcher beside kernel). Buffers are device pointers; activations are
// row-major [N = B*T, features]; every launch is checked. The fused attention is kernels/attention.h and the
// matrix products kernels/gemm.h.
#pragma once
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

using bf16 = __nv_bfloat16;

// ---------------------------------------------------------------------- kernels/elementwise.cu
void f32_to_bf16(const float* x, bf16* y, int64_t n, cudaStream_t s);  // y = bf16(x)
void bf16_to_f32(const bf16* x, float* y, int64_t n, cudaStream_t s);  // y = float(x)
void accumulate(float* acc, const float* x, int64_t n, cudaStream_t s);  // acc += x
// w = bf16(stddev * N(0,1)) seeded by (seed, index0 + i), or `fill` when stddev is 0; into w16 and/or w32
void init_normal(bf16* w16, float* w32, int64_t n, uint64_t seed, int64_t index0, float stddev, float fill, cudaStream_t s);
void sum_into(const float* x, int n, float* sum, cudaStream_t s);  // *sum += sum(x[0..n)), deterministic
