// kernels/elementwise.cu — the small elementwise kernels the partitioner and the model share: dtype
// conversions (the loader's too: weights in their file's type to bf16 and fp32), accumulation, and the
// seeded normal init of HF's `_init_weights` (N(0, 0.02) matrices, norm weights 1). Each is a grid-stride
// loop over n elements.
#include "kernels/ops.h"

#include <cuda_fp16.h>

#include "kernels/cuda_common.cuh"
#include "support/cuda_calls.h"

namespace {

// y = bf16(x)
__global__ void f32_to_bf16_kernel(const float* x, bf16* y, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        y[i] = __float2bfloat16(x[i]);
}

// y = float(x)
__global__ void bf16_to_f32_kernel(const bf16* x, float* y, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        y[i] = __bfloat162float(x[i]);
}

// y16 = bf16(float(x)), y32 = float(x)   (x: bf16, f16 or f32 as T)
template <typename T>
__global__ void convert_weights_kernel(const T* x, bf16* y16, float* y32, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        float v = float(x[i]);
        if (y16) y16[i] = __float2bfloat16(v);
        if (y32) y32[i] = v;
    }
}

// acc += x
__global__ void accumulate_kernel(float* acc, const float* x, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) acc[i] += x[i];
}

// w[i] = stddev * N(0,1) from splitmix64(seed + (index0 + i) * gamma) through Box-Muller, or `fill` when
// stddev is 0; rounded to bf16 in both outputs.
__global__ void init_normal_kernel(bf16* w16, float* w32, int64_t n, uint64_t seed, int64_t index0, float stddev, float fill) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        float x = fill;
        if (stddev > 0) {
            uint64_t z = splitmix64(seed + uint64_t(index0 + i) * kGoldenGamma);
            float u1 = (float(z >> 40) + 1.0f) / 16777217.0f, u2 = float((z >> 16) & 0xFFFFFF) / 16777216.0f;
            x = __bfloat162float(__float2bfloat16(stddev * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2)));
        }
        if (w16) w16[i] = __float2bfloat16(x);
        if (w32) w32[i] = x;
    }
}

// sum += sum of x[0..n)   (one block, a fixed order: deterministic)
__global__ void sum_kernel(const float* x, int n, float* sum) {
    float acc = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += x[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) *sum += acc;
}

}  // namespace

void f32_to_bf16(const float* x, bf16* y, int64_t n, cudaStream_t s) {
    if (n <= 0) return;
    f32_to_bf16_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, y, n);
    check_launch("f32_to_bf16_kernel");
}

void bf16_to_f32(const bf16* x, float* y, int64_t n, cudaStream_t s) {
    if (n <= 0) return;
    bf16_to_f32_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, y, n);
    check_launch("bf16_to_f32_kernel");
}

void convert_weights(const void* x, WeightType type, bf16* y16, float* y32, int64_t n, cudaStream_t s) {
    if (n <= 0 || (!y16 && !y32)) return;
    if (type == WeightType::bf16) convert_weights_kernel<<<blocks_for(n), kThreads, 0, s>>>(static_cast<const bf16*>(x), y16, y32, n);
    else if (type == WeightType::f16) convert_weights_kernel<<<blocks_for(n), kThreads, 0, s>>>(static_cast<const __half*>(x), y16, y32, n);
    else convert_weights_kernel<<<blocks_for(n), kThreads, 0, s>>>(static_cast<const float*>(x), y16, y32, n);
    check_launch("convert_weights_kernel");
}

void accumulate(float* acc, const float* x, int64_t n, cudaStream_t s) {
    if (n <= 0) return;
    accumulate_kernel<<<blocks_for(n), kThreads, 0, s>>>(acc, x, n);
    check_launch("accumulate_kernel");
}

void init_normal(bf16* w16, float* w32, int64_t n, uint64_t seed, int64_t index0, float stddev, float fill, cudaStream_t s) {
    if (n <= 0) return;
    init_normal_kernel<<<blocks_for(n), kThreads, 0, s>>>(w16, w32, n, seed, index0, stddev, fill);
    check_launch("init_normal_kernel");
}

void sum_into(const float* x, int n, float* sum, cudaStream_t s) {
    sum_kernel<<<1, 1024, 0, s>>>(x, n, sum);
    check_launch("sum_kernel");
}
