// kernels/cross_entropy.cu — the loss of next-token prediction, as HF's LlamaForCausalLM computes it: labels
// shifted by one, -100 ignored, cross-entropy over bf16 logits (as HF rounds them) in fp32.
//   shift     targets[n] = labels[n + 1] within a row of T, -100 at its last position
//   loss      loss_n = logsumexp(z_n) - z_n[target_n],   loss_sum += sum_n loss_n
//   backward  dz_n = (softmax(z_n) - onehot(target_n)) / divisor, written over z_n
// Nothing beyond the bf16 logits is materialised: no fp32 copy, no probabilities, no dlogits buffer (the
// backward overwrites the logits), and the model's head calls this one chunk of rows at a time, so the whole
// batch's logits never exist at once. The divisor is the
// number of targets in the whole optimizer step, so the micro-batches' gradients add up to the step's mean.
// The row losses are summed by one block in a fixed order (sum_into, elementwise.cu): deterministic.
#include "kernels/ops.h"

#include "kernels/cuda_common.cuh"
#include "support/cuda_calls.h"

namespace {

// targets[n] = labels[n + 1] within a row, -100 at its last position (HF's shift)
__global__ void shift_labels_kernel(const int32_t* labels, int32_t* targets, int64_t N, int T) {
    for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < N; n += int64_t(gridDim.x) * blockDim.x)
        targets[n] = (n % T == T - 1) ? -100 : labels[n + 1];
}

// Cross-entropy of one row of bf16 logits (as HF rounds them; the loss is computed in fp32):
//   loss = logsumexp(z) - z[target];  with backward, z is overwritten by dz = (softmax(z) - onehot(target)) / divisor
// (all 0 for rows without a target). One block per row: one pass for the max and the sum (online, each
// thread rescaling its sum when its max grows), one more for dz. 16-byte loads when V % 8 == 0.
__global__ void cross_entropy_kernel(bf16* logits, const int32_t* targets, float* row_loss, int V, float inv_divisor, bool backward) {
    int64_t row = blockIdx.x;
    bf16* z = logits + row * V;
    int target = targets[row];
    if (target < 0) {
        if (threadIdx.x == 0) row_loss[row] = 0.0f;
        if (backward)
            for (int j = threadIdx.x; j < V; j += blockDim.x) z[j] = __float2bfloat16(0.0f);
        return;
    }
    float zt = __bfloat162float(z[target]);  // read before the block overwrites the row
    float m = -INFINITY, sum = 0;
    auto see = [&](float x) {
        if (x > m) sum = sum * __expf(m - x) + 1.0f, m = x;
        else sum += __expf(x - m);
    };
    bool vec = V % 8 == 0;
    int packs = vec ? V / 8 : 0;
    for (int i = threadIdx.x; i < packs; i += blockDim.x) {
        uint4 p = reinterpret_cast<const uint4*>(z)[i];
        const bf16* e = reinterpret_cast<const bf16*>(&p);
        for (int k = 0; k < 8; ++k) see(__bfloat162float(e[k]));
    }
    for (int j = 8 * packs + threadIdx.x; j < V; j += blockDim.x) see(__bfloat162float(z[j]));
    float row_max = block_max(m);
    float lse = row_max + logf(block_sum(m == -INFINITY ? 0.0f : sum * __expf(m - row_max)));
    if (threadIdx.x == 0) row_loss[row] = lse - zt;
    if (!backward) return;
    for (int i = threadIdx.x; i < packs; i += blockDim.x) {
        uint4 p = reinterpret_cast<const uint4*>(z)[i];
        bf16* e = reinterpret_cast<bf16*>(&p);
        for (int k = 0; k < 8; ++k)
            e[k] = __float2bfloat16((__expf(__bfloat162float(e[k]) - lse) - (8 * i + k == target ? 1.0f : 0.0f)) * inv_divisor);
        reinterpret_cast<uint4*>(z)[i] = p;
    }
    for (int j = 8 * packs + threadIdx.x; j < V; j += blockDim.x)
        z[j] = __float2bfloat16((__expf(__bfloat162float(z[j]) - lse) - (j == target ? 1.0f : 0.0f)) * inv_divisor);
}

}  // namespace

void shift_labels(const int32_t* labels, int32_t* targets, int64_t N, int T, cudaStream_t s) {
    shift_labels_kernel<<<blocks_for(N), kThreads, 0, s>>>(labels, targets, N, T);
    check_launch("shift_labels_kernel");
}
void cross_entropy(bf16* logits, const int32_t* targets, float* row_loss, float* loss_sum, int rows, int V, float inv_divisor,
                   bool backward, cudaStream_t s) {
    cross_entropy_kernel<<<unsigned(rows), 1024, 0, s>>>(logits, targets, row_loss, V, inv_divisor, backward);
    check_launch("cross_entropy_kernel");
    sum_into(row_loss, rows, loss_sum, s);
}
