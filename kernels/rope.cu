// kernels/rope.cu — rotary position embedding (Su et al. 2021) on q and k, as HF's Llama applies it: the
// pairs are the two halves of each head (rotate_half), (x_i, x_{i + Dh/2}), not adjacent elements:
//   (x1, x2) -> (x1 cos θ - x2 sin θ,  x2 cos θ + x1 sin θ),   θ = position * inv_freq[i]
// The rotation is orthogonal, so its backward is the rotation by -θ applied to the gradient: one kernel
// with a sign serves both, in place. cos and sin come from tables [positions, Dh/2] the model fills once
// (rounded to bf16, as HF's are; llama3 frequency scaling included), and each row's position from an
// array: packed documents restart at 0, and generation rotates one token at its place in the KV cache.
#include "kernels/ops.h"

#include "kernels/cuda_common.cuh"
#include "support/cuda_calls.h"

namespace {

// RoPE on the halves of each head (HF's rotate_half), angle = positions[n] * inv_freq[i]:
//   (x1, x2) -> (x1 cos - sign x2 sin, x2 cos + sign x1 sin),   sign = -1 rotates back (the backward)
// Each thread rotates W consecutive pairs.
template <int W>
__global__ void rope_kernel(bf16* x, const int32_t* positions, const float* cos_t, const float* sin_t, int64_t N, int nh, int Dh,
                            float sign) {
    int half = Dh / 2, groups = half / W;
    int64_t total = N * nh * groups;
    float x1[W], x2[W];
    for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total; idx += int64_t(gridDim.x) * blockDim.x) {
        int i = int(idx % groups) * W;
        int64_t row = idx / groups;  // (n, h)
        int64_t p = positions[row / nh];
        bf16* r = x + row * Dh;
        load_bf16<W>(r + i, x1), load_bf16<W>(r + i + half, x2);
        for (int k = 0; k < W; ++k) rotate_pair(x1[k], x2[k], cos_t[p * half + i + k], sign * sin_t[p * half + i + k]);
        store_bf16<W>(r + i, x1), store_bf16<W>(r + i + half, x2);
    }
}

}  // namespace

void rope(bf16* x, const int32_t* positions, const float* cos_t, const float* sin_t, int64_t N, int nh, int Dh, bool inverse,
          cudaStream_t s) {
    float sign = inverse ? -1.0f : 1.0f;
    if ((Dh / 2) % 8 == 0) rope_kernel<8><<<blocks_for(N * nh * (Dh / 16)), kThreads, 0, s>>>(x, positions, cos_t, sin_t, N, nh, Dh, sign);
    else rope_kernel<1><<<blocks_for(N * nh * (Dh / 2)), kThreads, 0, s>>>(x, positions, cos_t, sin_t, N, nh, Dh, sign);
    check_launch("rope_kernel");
}
