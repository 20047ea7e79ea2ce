// kernels/lora_dropout.cu — PEFT's lora_dropout: dropout on the adapter's input x before A, in training only.
//   forward   x_d = x * keep / (1 - p)
//   backward  dx += g * keep / (1 - p)   (g = du A, the gradient that reached x_d)
// keep = lora_dropout_keep(seed, layer, target, step, i, p) (kernels/ops.h) is a hash of the element's
// coordinates, so no mask is stored: the backward and the activation recompute regenerate the forward's
// mask, and the CPU reference of the gradient check draws the same one. The backward adds into dx, which
// already holds the base projection's dy W.
#include "kernels/ops.h"

#include "kernels/cuda_common.cuh"
#include "support/cuda_calls.h"

namespace {

// x_d = x * keep / (1 - p),  keep = lora_dropout_keep(...)   (PEFT's dropout on the adapter's input)
__global__ void lora_dropout_kernel(const bf16* x, bf16* xd, int64_t n, uint64_t seed, int layer, int target, uint64_t step, float p) {
    float scale = 1.0f / (1.0f - p);
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        xd[i] = __float2bfloat16(lora_dropout_keep(seed, layer, target, step, i, p) ? __bfloat162float(x[i]) * scale : 0.0f);
}

// dx += g * keep / (1 - p)   (the dropout's backward: the same mask)
__global__ void lora_dropout_backward_kernel(const bf16* g, bf16* dx, int64_t n, uint64_t seed, int layer, int target, uint64_t step,
                                             float p) {
    float scale = 1.0f / (1.0f - p);
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        if (lora_dropout_keep(seed, layer, target, step, i, p)) dx[i] = __float2bfloat16(__bfloat162float(dx[i]) + __bfloat162float(g[i]) * scale);
}

}  // namespace

void lora_dropout(const bf16* x, bf16* xd, int64_t n, uint64_t seed, int layer, int target, uint64_t step, float p, cudaStream_t s) {
    lora_dropout_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, xd, n, seed, layer, target, step, p);
    check_launch("lora_dropout_kernel");
}
void lora_dropout_backward(const bf16* g, bf16* dx, int64_t n, uint64_t seed, int layer, int target, uint64_t step, float p,
                           cudaStream_t s) {
    lora_dropout_backward_kernel<<<blocks_for(n), kThreads, 0, s>>>(g, dx, n, seed, layer, target, step, p);
    check_launch("lora_dropout_backward_kernel");
}
