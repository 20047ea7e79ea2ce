// kernels/lora_dropout.cu — PEFT's lora_dropout: dropout on the adapter's input x before A, in training only.
//   forward   x_d = x * keep / (1 - p)
//   backward  dx += g * keep / (1 - p)   (g = du A, the gradient that reached x_d)
// keep = lora_dropout_keep(seed, layer, target, step, i, p) (kernels/ops.h) is a hash of the element's
// coordinates, so no mask is stored: the backward and the activation recompute regenerate the forward's
// mask, and the CPU reference of the gradient check draws the same one. The backward adds into dx, which
// already holds the base projection's dy W. Also here: lora_fill_slots, the adapters' s B copied into the
// padded rows of the weights they adapt (lora.h with_lora_slots), the other small LoRA kernel.
#include "kernels/ops.h"

#include "kernels/cuda_common.cuh"
#include "support/cuda_calls.h"

namespace {

// x_d = x * keep / (1 - p),  keep = lora_dropout_keep(...)   (PEFT's dropout on the adapter's input)
__global__ void lora_dropout_kernel(const bf16* x, bf16* xd, int64_t n, int cols, int ldx, uint64_t seed, int layer, int target,
                                    uint64_t step, float p) {
    float scale = 1.0f / (1.0f - p);
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        float v = __bfloat162float(x[row_at(i, cols, ldx)]);
        xd[i] = __float2bfloat16(lora_dropout_keep(seed, layer, target, step, i, p) ? v * scale : 0.0f);
    }
}

// dx += g * keep / (1 - p)   (the dropout's backward: the same mask)
__global__ void lora_dropout_backward_kernel(const bf16* g, bf16* dx, int64_t n, int cols, int ldx, uint64_t seed, int layer,
                                             int target, uint64_t step, float p) {
    float scale = 1.0f / (1.0f - p);
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        if (!lora_dropout_keep(seed, layer, target, step, i, p)) continue;
        bf16& d = dx[row_at(i, cols, ldx)];
        d = __float2bfloat16(__bfloat162float(d) + __bfloat162float(g[i]) * scale);
    }
}

struct Slots {
    LoraSlot m[kMaxLoraSlots];
    int count;
};

// W[o, col + j] = bf16(s B[o, j]): member blockIdx.y's rows, j < r
__global__ void lora_fill_slots_kernel(Slots a, int r, float s) {
    const LoraSlot& m = a.m[blockIdx.y];
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < int64_t(m.out) * r; i += int64_t(gridDim.x) * blockDim.x)
        m.W[i / r * m.ldw + m.col + i % r] = __float2bfloat16(s * __bfloat162float(m.B[i]));
}

}  // namespace

void lora_dropout(const bf16* x, bf16* xd, int64_t n, int cols, int ldx, uint64_t seed, int layer, int target, uint64_t step, float p,
                  cudaStream_t s) {
    lora_dropout_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, xd, n, cols, ldx, seed, layer, target, step, p);
    check_launch("lora_dropout_kernel");
}
void lora_dropout_backward(const bf16* g, bf16* dx, int64_t n, int cols, int ldx, uint64_t seed, int layer, int target, uint64_t step,
                           float p, cudaStream_t s) {
    lora_dropout_backward_kernel<<<blocks_for(n), kThreads, 0, s>>>(g, dx, n, cols, ldx, seed, layer, target, step, p);
    check_launch("lora_dropout_backward_kernel");
}
void lora_fill_slots(const LoraSlot* slots, int count, int r, float s, cudaStream_t stream) {
    if (count < 1) return;
    if (count > kMaxLoraSlots) exit_with_error("lora_fill_slots: " + std::to_string(count) + " members (at most " + std::to_string(kMaxLoraSlots) + ")");
    Slots a{};
    int64_t most = 0;
    for (int k = 0; k < count; ++k) a.m[k] = slots[k], most = std::max<int64_t>(most, int64_t(slots[k].out) * r);
    a.count = count;
    lora_fill_slots_kernel<<<dim3(unsigned(std::min<int64_t>(blocks_for(most), 1024)), unsigned(count)), kThreads, 0, stream>>>(a, r, s);
    check_launch("lora_fill_slots_kernel");
}
