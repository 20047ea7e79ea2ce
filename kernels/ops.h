// kernels/ops.h — the index of the hand-written kernels: each launcher below, by the file that holds its
// kernel (forward beside backward, launcher beside kernel). Buffers are device pointers; activations are
// row-major [N = B*T, features]; every launch is checked. The fused attention is kernels/attention.h and the
// matrix products kernels/gemm.h.
#pragma once
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "support/common.h"

using bf16 = __nv_bfloat16;

// ---------------------------------------------------------------------- kernels/elementwise.cu
void f32_to_bf16(const float* x, bf16* y, int64_t n, cudaStream_t s);  // y = bf16(x)
void bf16_to_f32(const bf16* x, float* y, int64_t n, cudaStream_t s);  // y = float(x)
void accumulate(float* acc, const float* x, int64_t n, cudaStream_t s);  // acc += x
// Weights as a file stores them, to what the store keeps: y16 = bf16(float(x)), y32 = float(x) (exact), each
// written when not null. float(x) is exact for all three types; bf16 rounds to nearest even, as the host's
// float_to_bf16 does (the loader converts on the GPU, the host reference in support/safetensors.h).
enum class WeightType { bf16, f16, f32 };
void convert_weights(const void* x, WeightType type, bf16* y16, float* y32, int64_t n, cudaStream_t s);
// w = bf16(stddev * N(0,1)) seeded by (seed, index0 + i), or `fill` when stddev is 0; into w16 and/or w32
void init_normal(bf16* w16, float* w32, int64_t n, uint64_t seed, int64_t index0, float stddev, float fill, cudaStream_t s);
void sum_into(const float* x, int n, float* sum, cudaStream_t s);  // *sum += sum(x[0..n)), deterministic

// ---------------------------------------------------------------------- kernels/embedding.cu
void embedding_forward(const int32_t* ids, const bf16* E, bf16* h, int64_t N, int D, cudaStream_t s);  // h[n] = E[ids[n]]
// dE[id] += sum of dh[n] over the positions n holding token id (fp32, deterministic)
void embedding_backward(const int32_t* ids, const bf16* dh, float* dE, int64_t N, int D, cudaStream_t s);

// ---------------------------------------------------------------------- kernels/rmsnorm.cu
// y = w * x * rstd, rstd [N] = 1 / sqrt(mean(x^2) + eps) of each row of D (y's rows ldy apart; 0: D)
void rmsnorm_forward(const bf16* x, const bf16* w, bf16* y, float* rstd, int64_t N, int D, float eps, cudaStream_t s, int ldy = 0);
// dx = residual + d rmsnorm / dx (residual may be null);  dw += d rmsnorm / dw when dw is not null
// (dw_partial: kNormPartials * D floats of scratch; dy's rows ldy apart, 0: D)
constexpr int kNormPartials = 256;
void rmsnorm_backward(const bf16* x, const bf16* w, const float* rstd, const bf16* dy, const bf16* residual, bf16* dx,
                      float* dw, float* dw_partial, int64_t N, int D, cudaStream_t s, int ldy = 0);
// Per-head RMSNorm (Qwen3's q_norm, k_norm): x [N, heads*Dh] normalised over each head's Dh with one weight
// [Dh] for every head, rstd [N*heads]; its forward is rmsnorm_forward on N*heads rows of Dh. Backward in
// place: d holds d y on entry, d x on exit;  dw += d / dw when dw is not null (dw_partial: kNormPartials *
// heads * Dh floats of scratch)
void head_rmsnorm_backward(const bf16* x, const bf16* w, const float* rstd, bf16* d, float* dw, float* dw_partial, int64_t N,
                           int heads, int Dh, cudaStream_t s);

// ---------------------------------------------------------------------- kernels/rope.cu
// RoPE in place on x [N, nh, Dh], row n at position positions[n]; cos/sin tables [positions, Dh/2].
// inverse = true rotates back (the transpose of the rotation: the backward pass).
void rope(bf16* x, const int32_t* positions, const float* cos_t, const float* sin_t, int64_t N, int nh, int Dh, bool inverse,
          cudaStream_t s);

// ---------------------------------------------------------------------- kernels/swiglu.cu
// act = silu(g) * u over n elements; act's rows of cols elements ld apart (0, 0: contiguous)
void swiglu_forward(const bf16* g, const bf16* u, bf16* act, int64_t n, cudaStream_t s, int cols = 0, int ld = 0);
// dg = dact * u * silu'(g),  du = dact * silu(g)  (dact's rows as act's)
void swiglu_backward(const bf16* g, const bf16* u, const bf16* dact, bf16* dg, bf16* du, int64_t n, cudaStream_t s, int cols = 0,
                     int ld = 0);

// ---------------------------------------------------------------------- kernels/lora_dropout.cu
// LoRA dropout's mask: whether element `index` of the adapter input of (layer, target) in micro-batch
// `step` is kept (probability 1 - p). A counter-based hash, so backward and recompute regenerate the
// forward's mask instead of storing it, and a CPU reference can reproduce it.
__host__ __device__ inline bool lora_dropout_keep(uint64_t seed, int layer, int target, uint64_t step, int64_t index, float p) {
    uint64_t z = seed ^ (uint64_t(layer) * 0xA24BAED4963EE407ull) ^ (uint64_t(target) * 0x9FB21C651E98DF25ull) ^
                 (step * 0xD6E8FEB86659FD93ull);
    z = splitmix64(z + uint64_t(index) * kGoldenGamma);
    return float(z >> 40) * (1.0f / 16777216.0f) >= p;
}
// x_d = x * keep / (1 - p) with keep = lora_dropout_keep(seed, layer, target, step, i, p) for element i of
// x [n / cols, cols] (x's rows ldx apart; x_d contiguous).
void lora_dropout(const bf16* x, bf16* xd, int64_t n, int cols, int ldx, uint64_t seed, int layer, int target, uint64_t step, float p,
                  cudaStream_t s);
// dx += g * keep / (1 - p): the backward, through the same mask (dx's rows ldx apart; g contiguous).
void lora_dropout_backward(const bf16* g, bf16* dx, int64_t n, int cols, int ldx, uint64_t seed, int layer, int target, uint64_t step,
                           float p, cudaStream_t s);
// The adapters' s B into the padded rows of their weights (lora.h with_lora_slots): for each of `count`
// members, W[o, col + j] = bf16(s B[o, j]) for o < out, j < r, W's rows ldw apart.
struct LoraSlot {
    const bf16* B;  // [out, r]
    bf16* W;        // the weight's first row
    int out, ldw, col;
};
constexpr int kMaxLoraSlots = 6;  // every projection but o_proj
void lora_fill_slots(const LoraSlot* slots, int count, int r, float s, cudaStream_t stream);

// ---------------------------------------------------------------------- kernels/cross_entropy.cu
// targets[n] = labels[n + 1] within each row of T, -100 at its last position
void shift_labels(const int32_t* labels, int32_t* targets, int64_t N, int T, cudaStream_t s);
// row_loss = CE of each row of bf16 logits (0 without a target), loss_sum += their sum (in a fixed order);
// when backward, logits are overwritten by dlogits = (softmax - onehot) * inv_divisor.
void cross_entropy(bf16* logits, const int32_t* targets, float* row_loss, float* loss_sum, int rows, int V, float inv_divisor,
                   bool backward, cudaStream_t s);
